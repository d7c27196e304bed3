"""The CUDA section of ``REPORT.md``: a separate run on a GPU machine (``bash bench/cuda.sh``),
its fp32 engines and the 2:4 semi-structured model, with where, when and how it was measured.
"""

from __future__ import annotations

from cnnprune.analysis import CUDA_LABELS, Analysis, CudaSpeedup
from cnnprune.fmt import pct, times


def _cuda_header(a: Analysis) -> list[str]:
    cuda = a.results["cuda"]
    m, info = cuda["machine"], cuda["machine"].get("cuda_info") or {}
    rounds = sorted({r.row.rounds for r in a.cuda})
    passes = max(r.row.passes for r in a.cuda)
    return [
        f"## CUDA: a separate run on {m.get('gpu')}\n",
        f"- Where: {m.get('gpu')} (compute capability {info.get('capability')}, driver {info.get('driver')}), "
        f"CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, PyTorch {m.get('torch')}; host {m.get('cpu_model')}. "
        "This is not the CPU machine of the sections above: its figures are compared with each other only.",
        f"- When and how: {cuda.get('datetime')}, commit `{m.get('commit')}`, `{m.get('command')}` "
        f"(`bash bench/cuda.sh`; pytest-benchmark {cuda.get('pytest_benchmark')}), read from `{cuda.get('source')}`.",
        f"- Timing: one forward pass per round, `torch.cuda.synchronize()` inside the timed call; "
        f"{'/'.join(map(str, rounds))} timed rounds in all over {passes} passes after ≥2 warm-up rounds and an "
        f"untimed first call (cuDNN autotuning on: `cudnn.benchmark` = {info.get('cudnn_benchmark')}); "
        "median (IQR) in ms; speedups are medians of per-pass ratios. fp32 engines run with PyTorch's defaults: "
        f"cuDNN convolutions may use TF32 (`cudnn.allow_tf32` = {info.get('cudnn_allow_tf32')}), matmuls "
        f"(`matmul.allow_tf32` = {info.get('matmul_allow_tf32')}) and cuSPARSE do not. The CUDA graph engine "
        "replays the eager model captured once per batch size (no launch cost per kernel).\n"]


def _cuda_fp32(a: Analysis) -> list[str]:
    fp32 = [r for r in a.cuda if r.row.model != "semi_2_4"]
    engines = [e for e in ("torch", "cuda-graph", "torch-csr") if any(r.row.engine == e for r in fp32)]
    sparsity = {r.row.model: r.row.sparsity for r in fp32 if r.row.sparsity is not None}
    L = []
    for batch in sorted({r.row.batch for r in fp32}):
        L += [f"### CUDA, fp32, batch {batch}\n",
              "| model | sparsity | " + " | ".join(f"{CUDA_LABELS[e]} ms" for e in engines) + " | CSR speed vs best dense |",
              "|---|---:|" + "---:|" * len(engines) + "---:|"]
        for model in [n for n in a.models if any(r.row.model == n and r.row.batch == batch for r in fp32)]:
            by = {r.row.engine: r for r in fp32 if r.row.model == model and r.row.batch == batch}
            cells = [f"{by[e].row.median_ms:.3f} ({by[e].row.iqr_ms:.3f})" if e in by else "–" for e in engines]
            csr = by.get("torch-csr")
            ratio = csr.vs_best_dense if csr else None
            cell = f"{times(ratio.median)} ({ratio.low:.2f}–{ratio.high:.2f})" if ratio else \
                ("– (0.00–0.00)" if csr else "–")
            L.append(f"| {model} | {pct(sparsity.get(model, 0.0))} | " + " | ".join(cells) + f" | {cell} |")
        L.append("")
    L.append("CSR speed vs best dense = time of the faster dense engine (eager or CUDA graph) on the same model / time "
             "of torch.sparse CSR; below 1× it is slower. Dense engines multiply the zeros of the report's "
             "unstructured masks like any number, and cuSPARSE cannot turn 50–90 % scattered zeros into speed at "
             "these sizes.\n")
    return L


def _semi_intro(a: Analysis) -> list[str]:
    s24 = a.results.get("semi_2_4") or {}
    if not s24:
        return []
    t, acc = s24["vs_unpruned"], a.models["unpruned"].accuracy["dense"]
    return [f"The unpruned checkpoint pruned 2:4 by magnitude (in every 4 consecutive weights of a row of the "
            f"im2col GEMM the 2 smallest are zeroed; the 3-channel stem, 27 weights per row, stays dense), "
            f"without fine-tuning: sparsity {pct(s24['sparsity'])}, {s24['params_nonzero']:,} of "
            f"{s24['params_total']:,} parameters nonzero, FLOP limit {times(s24['flop_limit_speedup'])}; "
            f"top-1 {pct(s24['accuracy'])} vs {pct(acc)} unpruned ({a.results['dataset']}, CPU, fp32, "
            f"{a.results['test_images']:,} images; McNemar p = {t['p_value']:.3f}). Timed in fp16, every "
            "engine replayed from a CUDA graph so that host work (kernel launches, cuSPARSELt's per-call "
            "planning) is out and GPU time is compared.\n"]


def _semi_cell(r: CudaSpeedup) -> str:
    return f"{r.row.median_ms:.3f} ({r.row.iqr_ms:.3f})" + ("" if r.row.graph is True else " ◊")


def _cuda_semi(a: Analysis) -> list[str]:
    semi = [r for r in a.cuda if r.row.model == "semi_2_4"]
    if not semi:
        return []
    engines = [e for e in ("fp16-cudnn", "fp16-gemm", "fp16-2:4", "fp16-2:4-cutlass")
               if any(r.row.engine == e for r in semi)]
    L = ["### What a GPU needs: 2:4 semi-structured sparsity (beyond the report)\n", *_semi_intro(a),
         "| batch | " + " | ".join(f"{CUDA_LABELS[e]} ms" for e in engines)
         + " | 2:4 speed vs dense GEMM | 2:4 speed vs best fp16 dense |",
         "|---:|" + "---:|" * len(engines) + "---:|---:|"]
    for batch in sorted({r.row.batch for r in semi}):
        by = {r.row.engine: r for r in semi if r.row.batch == batch}
        cells = [_semi_cell(by[e]) if e in by else "–" for e in engines]
        sp = next((by[e] for e in ("fp16-2:4", "fp16-2:4-cutlass") if e in by), None)
        best = sp.vs_best_dense.median if sp and sp.vs_best_dense else None
        L.append(f"| {batch} | " + " | ".join(cells) + f" | {times(sp.vs_dense_gemm if sp else None)} | "
                 f"{times(best)} |")
    layers = next((r.row.layers_2_4 for r in semi if r.row.layers_2_4), 0)
    L.append(f"\n{layers} of the 20 convolutions ran as 2:4 GEMMs (the stem and fc dense). ◊ = capture in a CUDA "
             "graph failed and the case ran eager. PyTorch's CUTLASS 2:4 kernels run only on compute capability "
             "8.x, so on other GPUs that engine is skipped.\n")
    return L


def cuda_section(a: Analysis) -> list[str]:
    """The CUDA section: a separate run's figures, with where, when and how they were taken."""
    if not a.cuda:
        return []
    return _cuda_header(a) + _cuda_fp32(a) + _cuda_semi(a)
