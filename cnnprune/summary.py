"""The run at a glance in the terminal: one row per model, 80 columns wide."""

from __future__ import annotations

from cnnprune.analysis import Analysis, analyse


def summary_table(results: dict | Analysis):
    """Accuracy, size and the sparse engine's CPU latency per model (a rich table that fits an
    80-column terminal with two batch sizes)."""
    from rich import box
    from rich.table import Table

    a = results if isinstance(results, Analysis) else analyse(results)
    rows = {(s.row.model, s.row.batch): s for s in a.speedups if s.row.device == "cpu" and s.row.engine == "sparse"}
    batches = sorted({b for _, b in rows})
    data = a.results["dataset"] or "accuracy not measured"
    table = Table(title=f"cnnprune: {a.spec.arch}, {data}, {a.results['machine']['threads']} threads",
                  caption="b<N>: cnnprune sparse median ms at batch N (× its speed vs the best dense engine)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("model", no_wrap=True)
    for col in ("sparsity", "top-1", "csr/dense"):
        table.add_column(col, justify="right", no_wrap=True)
    for b in batches:
        table.add_column(f"b{b}", justify="right", no_wrap=True)
    for name, m in a.models.items():
        top1 = f"{m.accuracy['dense']:.2%}" if "dense" in m.accuracy else "–"
        cells = [f"{m.sparsity:.1%}", top1, f"{m.files.get('csr', 0) / m.files['dense']:.1%}"]
        for b in batches:
            s = rows.get((name, b))
            ratio = s.vs_best_dense.median if s and s.vs_best_dense else None
            cells.append("–" if s is None else f"{s.row.median_ms:.2f} ({ratio:.2f}×)" if ratio else
                         f"{s.row.median_ms:.2f}")
        table.add_row(name, *cells)
    return table
