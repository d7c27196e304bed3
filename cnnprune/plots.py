"""The report's PNG plots, one function each, drawn from one run's :class:`~cnnprune.analysis.Analysis`."""

from __future__ import annotations

import io
from pathlib import Path

from cnnprune.analysis import CUDA_LABELS, ENGINE_LABELS, ITERATIVE, METHOD_LABELS, ONE_SHOT, Analysis
from cnnprune.fileio import write_bytes
from cnnprune.schedules import REPORT_ACCURACY_CIFAR10, target_sparsity


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())
    _pyplot().close(fig)
    return path.name


def latency_plots(a: Analysis, folder: Path) -> list[str]:
    """Median latency against sparsity (one-shot models), one plot per device and batch."""
    plt, names = _pyplot(), []
    for device, batch in sorted({(r.device, r.batch) for r in a.latency}):
        fig, ax = plt.subplots(figsize=(6, 4))
        seq = [m for m in ("unpruned", *ONE_SHOT) if m in a.models]
        for engine in ("torch", "onnxruntime", "openvino", "sparse", "torch-csr"):
            pts = [(a.models[m].sparsity, r.median_ms) for m in seq if (r := a.row(device, batch, m, engine))]
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", label=ENGINE_LABELS[engine])
        ax.set_yscale("log")
        ax.set_xlabel("global sparsity of conv+linear weights (one-shot)")
        ax.set_ylabel("median latency (ms, log)")
        ax.set_title(f"{device}, batch {batch}, {a.results['machine']['threads']} threads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        names.append(_save(fig, folder / f"latency_{device}_b{batch}.png"))
    return names


def cuda_plot(a: Analysis, folder: Path) -> list[str]:
    """The CUDA run's fp32 latencies against sparsity, one panel per batch (none without a run)."""
    rows = [r.row for r in a.cuda if r.row.model != "semi_2_4"]
    if not rows:
        return []
    plt = _pyplot()
    batches = sorted({r.batch for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(4 * len(batches), 3.6), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for engine in ("torch", "cuda-graph", "torch-csr"):
            pts = sorted((r.sparsity, r.median_ms) for r in rows if r.batch == batch and r.engine == engine
                         and r.model in ("unpruned", *ONE_SHOT))
            if len(pts) > 1:
                ax.plot(*zip(*pts), marker="o", label=CUDA_LABELS[engine])
        ax.set_yscale("log")
        ax.set_xlabel("global sparsity (one-shot)")
        ax.set_title(f"cuda, batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median latency (ms, log)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(a.results["cuda"]["machine"].get("gpu") or "GPU", fontsize=9, y=1.04)
    return [_save(fig, folder / "latency_cuda.png")]


def accuracy_plot(a: Analysis, folder: Path) -> list[str]:
    """Measured top-1 against measured sparsity for each pruning method this run made (plain, BN-
    recalibrated, fine-tuned), beside the report's quoted figures at their target sparsities (each
    point placed by its model's schedule, whatever subset was run). None where accuracy was not measured."""
    if not a.accuracy_measured:
        return []
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for schedule, label in ((ONE_SHOT, "one-shot"), (ITERATIVE, "iterative")):
        seq = [m for m in ("unpruned", *schedule) if m in a.models]
        ax.plot([a.models[m].sparsity for m in seq], [100 * a.models[m].accuracy["dense"] for m in seq],
                marker="o", label=f"{label} (measured, {a.results['dataset']})")
        ax.plot([target_sparsity(m) for m in seq], [REPORT_ACCURACY_CIFAR10[m] for m in seq], linestyle="--",
                marker="x", label=f"{label} (report, CIFAR-10, quoted)")
        for method, style in (("recalibrated", "s-"), ("fine-tuned", "D")):
            rows = [a.methods.get(method, {}).get(m) for m in schedule]
            pts = [(r.sparsity, 100 * r.accuracy) for r in rows if r]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{label}, {METHOD_LABELS[method]} (measured)")
    ax.set_xlabel("global sparsity")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return [_save(fig, folder / "accuracy.png")]


def sizes_plot(a: Analysis, folder: Path) -> list[str]:
    """File size of each form per model."""
    fig, ax = _pyplot().subplots(figsize=(7, 4))
    ms = list(a.models)
    labels = {"dense": "dense .pth", "onnx": ".onnx", "csr": "compact CSR .csr.pt"}
    for i, form in enumerate(labels):
        ax.bar([j + (i - 1) * 0.27 for j in range(len(ms))], [a.models[m].files.get(form, 0) / 1e6 for m in ms],
               width=0.27, label=labels[form])
    ax.set_xticks(range(len(ms)))
    ax.set_xticklabels(ms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("file size (MB)")
    ax.legend(fontsize=8)
    return [_save(fig, folder / "sizes.png")]


def plots(a: Analysis, folder: Path) -> list[str]:
    """Every plot of the report, written atomically into ``folder``; their file names."""
    return latency_plots(a, folder) + cuda_plot(a, folder) + accuracy_plot(a, folder) + sizes_plot(a, folder)
