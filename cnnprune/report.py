"""Turn one run's measurements into ``results.json``, ``REPORT.md`` and PNG plots.

Every number in the report is read from ``results.json`` of the same run; every verdict is
computed from those numbers with the thresholds stated next to it. Nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cnnprune.errors import CnnpruneError, CliParser, add_debug_flag, run_cli
from cnnprune.fileio import write_bytes, write_json, write_text
from cnnprune.schedules import REPORT_ACCURACY_CIFAR10, REPORT_TEST_IMAGES

DENSE_ENGINES = ("torch", "onnxruntime")
ENGINE_LABELS = {"torch": "PyTorch eager (dense)", "onnxruntime": "onnxruntime (dense)",
                 "sparse": "cnnprune sparse", "torch-csr": "torch.sparse CSR (naive)"}
SIGNIFICANT_SPEEDUP = 1.2   # "speeds up significantly": at least 1.2× faster
LESS_MEMORY = 0.9           # "less resource usage": at least 10 % less
MUCH_LIGHTER = 0.5          # "a much lighter model": at most half the bytes
ACCURACY_KEPT_PP = 1.0      # accuracy "kept": at most 1 percentage point lost
# The sparse engine's targets (speedup over the best dense engine, same model, same run), by
# target sparsity and batch size; 1.0 means "never slower than dense".
SPARSE_GOALS = {("90", 32): 3.2, ("90", 1): 1.5, ("75", 32): 2.0, ("75", 1): 1.3, ("50", 32): 1.0, ("50", 1): 1.0}
CUDA_LABELS = {"torch": "PyTorch eager (dense)", "cuda-graph": "PyTorch CUDA graph (dense)",
               "torch-csr": "torch.sparse CSR (cuSPARSE)", "fp16-cudnn": "cuDNN (dense)",
               "fp16-gemm": "im2col GEMM (dense)", "fp16-2:4": "im2col 2:4 GEMM (cuSPARSELt)",
               "fp16-2:4-cutlass": "im2col 2:4 GEMM (CUTLASS)"}
CUDA_DENSE = ("torch", "cuda-graph")          # fp32 dense engines on the GPU
FP16_DENSE = ("fp16-cudnn", "fp16-gemm")      # fp16 dense engines of the 2:4 comparison
ONE_SHOT = ("one_shot_50", "one_shot_75", "one_shot_90")
ITERATIVE = ("iterative_50", "iterative_75", "iterative_90")


# ------------------------------------------------------------------ assembling


def latency_rows(bench: dict) -> list[dict]:
    """One row per case (model, engine, batch, device) from pytest-benchmark's JSON, its passes
    merged (times in ms): median, IQR, min, max over the rounds of every pass together, and
    each pass's own median in ``pass_medians_ms`` (pass order) for per-pass ratios."""
    groups: dict[tuple, list[dict]] = {}
    for b in bench.get("benchmarks", []):
        e = b["extra_info"]
        groups.setdefault((e["model"], e["engine"], e["batch"], e["device"]), []).append(b)
    rows = []
    for runs in groups.values():
        runs.sort(key=lambda b: b["extra_info"].get("pass", 0))
        stats = [b["stats"] for b in runs]
        data = np.concatenate([s["data"] for s in stats]) * 1e3 if all("data" in s for s in stats) else None
        medians = [s["median"] * 1e3 for s in stats]
        if data is not None:
            q1, med, q3 = np.percentile(data, [25, 50, 75])
            pooled = {"median_ms": float(med), "iqr_ms": float(q3 - q1), "mean_ms": float(data.mean()),
                      "min_ms": float(data.min()), "max_ms": float(data.max())}
        else:
            pooled = {"median_ms": float(np.median(medians)), "iqr_ms": float(np.median([s["iqr"] for s in stats])) * 1e3,
                      "mean_ms": float(np.mean([s["mean"] for s in stats])) * 1e3,
                      "min_ms": min(s["min"] for s in stats) * 1e3, "max_ms": max(s["max"] for s in stats) * 1e3}
        extra = {k: v for k, v in runs[0]["extra_info"].items() if k != "pass"}
        used = sorted({b["extra_info"]["sparse_engine_used"] for b in runs if "sparse_engine_used" in b["extra_info"]})
        if used:
            extra["sparse_engine_used"] = "+".join(used)
        for key in ("dense_layers", "winograd_layers"):
            if key in extra:
                extra[key] = [b["extra_info"].get(key, 0) for b in runs]
        rows.append({**extra, **pooled, "rounds": sum(s["rounds"] for s in stats), "passes": len(runs),
                     "pass_medians_ms": medians, "name": runs[0]["name"]})
    return rows


def mask_agreement(artifacts: Path) -> dict[str, float]:
    """Fraction 0–1 of conv/linear weights pruned identically by one-shot and iterative at each target."""
    import torch

    from cnnprune.model import load_state_dict

    out = {}
    for one, it in zip(ONE_SHOT, ITERATIVE):
        a, b = load_state_dict(artifacts / f"{one}.pth"), load_state_dict(artifacts / f"{it}.pth")
        same = total = 0
        for k, v in a.items():
            if k.endswith(".weight") and v.ndim in (2, 4):
                same += int(((v == 0) == (b[k] == 0)).sum())
                total += v.numel()
        out[one.split("_")[-1]] = same / total
    return out


def mcnemar(correct_a: list[int], correct_b: list[int]) -> dict:
    """Exact two-sided McNemar test on paired per-image correctness (a: baseline, b: other)."""
    only_a = sum(1 for x, y in zip(correct_a, correct_b) if x and not y)
    only_b = sum(1 for x, y in zip(correct_a, correct_b) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return {"only_baseline_correct": only_a, "only_other_correct": only_b, "p_value": p}


def semi_2_4_summary(semi: dict | None, unpruned_correct: list[int]) -> dict | None:
    """The 2:4 model's size and accuracy, with the paired test against the unpruned model."""
    if not semi:
        return None
    keep = ("checkpoint", "accuracy", "sparsity", "params_nonzero", "params_total", "flop_limit_speedup")
    return {**{k: semi[k] for k in keep}, "vs_unpruned": mcnemar(unpruned_correct, semi["correct"])}


def cuda_summary(bench: dict | None) -> dict | None:
    """A CUDA run's cases merged over passes, with the run's own machine, date and command."""
    if not bench:
        return None
    return {"source": bench.get("path"), "datetime": bench.get("datetime"),
            "pytest_benchmark": bench.get("version"), "machine": bench.get("machine_info", {}).get("cnnprune", {}),
            "latency": latency_rows(bench)}


def assemble_results(*, config: dict, machine: dict, manifest: dict, export: dict, bench: dict, accuracy: dict,
                     memory: dict, counts: dict, finetune: dict | None, artifacts: Path,
                     step_seconds: dict, semi_2_4: dict | None = None, cuda_bench: dict | None = None) -> dict:
    models = list(counts)
    acc_models = accuracy["models"]
    paired = {}
    for name in models:
        if name != "unpruned":
            paired[name] = mcnemar(acc_models["unpruned"]["dense"]["predictions"],
                                   acc_models[name]["dense"]["predictions"])
    pairwise = {}
    for one, it in zip(ONE_SHOT, ITERATIVE):
        if one in acc_models and it in acc_models:
            pairwise[one.split("_")[-1]] = mcnemar(acc_models[one]["dense"]["predictions"],
                                                   acc_models[it]["dense"]["predictions"])
    accuracy_out = {n: {f: {k: v for k, v in e.items() if k != "predictions"} for f, e in acc_models[n].items()}
                    for n in models}
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": config,
        "machine": machine,
        "benchmark_machine_info": bench.get("machine_info", {}).get("cnnprune", {}),
        "source_checkpoint": {"path": manifest["source"], "sha256": manifest["source_sha256"]},
        "dataset": accuracy["dataset"],
        "test_images": accuracy["test_images"],
        "models": {n: {
            "sparsity": counts[n]["sparsity"],
            "counts": {k: v for k, v in counts[n].items() if k != "per_layer"},
            "per_layer": counts[n]["per_layer"],
            "files": {k: f["bytes"] for k, f in export["models"][n]["files"].items()},
            "csr_layouts": export["models"][n]["files"].get("csr", {}).get("layouts"),
            "onnx_max_abs_diff": export["models"][n].get("onnx_max_abs_diff"),
            "accuracy": accuracy_out[n],
            "vs_unpruned": paired.get(n),
            "memory": memory["models"][n],
            "method": manifest["checkpoints"].get(n, {}).get("method", "unpruned"),
        } for n in models},
        "memory_runs": memory["runs"],
        "latency": latency_rows(bench),
        "mask_agreement_one_shot_vs_iterative": mask_agreement(artifacts) if all(
            m in models for m in ONE_SHOT + ITERATIVE) else {},
        "one_shot_vs_iterative": pairwise,
        "finetune": finetune,
        "semi_2_4": semi_2_4_summary(semi_2_4, acc_models["unpruned"]["dense"]["predictions"]),
        "cuda": cuda_summary(cuda_bench),
        "report_accuracy_cifar10": REPORT_ACCURACY_CIFAR10,
        "report_test_images": REPORT_TEST_IMAGES,
        "step_seconds": step_seconds,
    }


# ------------------------------------------------------------------ derived figures


def latency_table(results: dict) -> dict:
    """{(device, batch): {model: {engine: row}}}."""
    table: dict = {}
    for r in results["latency"]:
        table.setdefault((r["device"], r["batch"]), {}).setdefault(r["model"], {})[r["engine"]] = r
    return table


def best_dense(engines: dict) -> tuple[str, float] | None:
    cands = [(e, engines[e]["median_ms"]) for e in DENSE_ENGINES if e in engines]
    return min(cands, key=lambda c: c[1]) if cands else None


def paired_ratio(num: dict, den: dict) -> tuple[float, float, float]:
    """num/den time ratio as the median over passes of each pass's ratio, with its (min, max):
    within a pass the two were timed seconds apart, so the machine's slow drift cancels. Rows
    with different pass counts fall back to the ratio of pooled medians."""
    a, b = num.get("pass_medians_ms"), den.get("pass_medians_ms")
    if not a or not b or len(a) != len(b):
        r = num["median_ms"] / den["median_ms"]
        return r, r, r
    ratios = [x / y for x, y in zip(a, b)]
    return float(np.median(ratios)), min(ratios), max(ratios)


def speedups(results: dict) -> list[dict]:
    """Per device, batch, model and engine: speedup over the best dense engine (same model and
    over the unpruned model; per-pass ratios, median and range) and the fraction of the FLOP
    limit reached. The best dense engine is the one with the lower pooled median."""
    out = []
    for (device, batch), models in sorted(latency_table(results).items()):
        unpruned = models.get("unpruned", {})
        base_unpruned = best_dense(unpruned)
        for model, engines in models.items():
            bd = best_dense(engines)
            limit = results["models"][model]["counts"]["flop_limit_speedup"]
            for engine, row in engines.items():
                same = paired_ratio(engines[bd[0]], row) if bd else None
                s_same = same[0] if same else None
                vs_unpruned = paired_ratio(unpruned[base_unpruned[0]], row) if base_unpruned else None
                s_unpruned = vs_unpruned[0] if vs_unpruned else None
                same_engine_unpruned = unpruned.get(engine)
                vs_same = paired_ratio(same_engine_unpruned, row) if same_engine_unpruned else None
                out.append({"device": device, "batch": batch, "model": model, "engine": engine,
                            "median_ms": row["median_ms"], "iqr_ms": row["iqr_ms"], "rounds": row["rounds"],
                            "best_dense_engine": bd[0] if bd else None,
                            "speedup_vs_best_dense": s_same,
                            "speedup_vs_best_dense_range": [same[1], same[2]] if same else None,
                            "speedup_vs_best_dense_unpruned": s_unpruned,
                            "speedup_vs_best_dense_unpruned_min": vs_unpruned[1] if vs_unpruned else None,
                            "speedup_vs_same_engine_unpruned": vs_same[0] if vs_same else None,
                            "speedup_vs_same_engine_unpruned_min": vs_same[1] if vs_same else None,
                            "flop_limit": limit,
                            "fraction_of_flop_limit": s_same / limit if s_same and limit else None,
                            "sparse_engine_used": row.get("sparse_engine_used")})
    return out


def sparse_goals(results: dict) -> list[dict]:
    """Each pruned model against the sparse engine's goal for its sparsity and batch (CPU).

    Speedups are medians of per-pass ratios. With several passes, a goal of 1.0 ("never
    slower") is met unless the sparse engine was slower in every pass, and a speedup is within
    noise when its range over passes includes 1; with one pass, "never slower" means within the
    best dense engine's median + IQR and the noise is the one-shot vs iterative spread
    (``noise_floor``). A goal above the model's FLOP limit can only be met by doing less
    arithmetic per nonzero than dense engines do, which is said.
    """
    out = []
    rows = [s for s in speedups(results) if s["device"] == "cpu" and s["engine"] == "sparse"]
    table = latency_table(results)
    noise = noise_floor(results)
    for r in sorted(rows, key=lambda r: (r["model"].split("_")[-1], r["batch"], r["model"])):
        goal = SPARSE_GOALS.get((r["model"].split("_")[-1], r["batch"]))
        if goal is None or r["speedup_vs_best_dense"] is None:
            continue
        dense = table[("cpu", r["batch"])][r["model"]][r["best_dense_engine"]]
        low, high = r["speedup_vs_best_dense_range"]
        paired = table[("cpu", r["batch"])][r["model"]]["sparse"].get("passes", 1) > 1
        if paired:
            within_noise = low <= 1.0 <= high
            met = high >= 1.0 if goal == 1.0 else r["speedup_vs_best_dense"] >= goal
        else:
            spread = noise.get(("cpu", r["batch"]), 1.0)
            within_noise = 1 / spread < r["speedup_vs_best_dense"] < spread
            met = (r["median_ms"] <= dense["median_ms"] + dense["iqr_ms"] if goal == 1.0
                   else r["speedup_vs_best_dense"] >= goal)
        out.append({"model": r["model"], "batch": r["batch"], "goal": goal, "speedup": r["speedup_vs_best_dense"],
                    "speedup_range": [low, high], "paired": paired, "within_noise": within_noise,
                    "flop_limit": r["flop_limit"], "met": met, "above_flop_limit": goal > r["flop_limit"],
                    "pruning_alone": r["speedup_vs_same_engine_unpruned"],
                    "sparse_engine_used": r["sparse_engine_used"]})
    return out


def noise_floor(results: dict) -> dict[tuple[str, int], float]:
    """Per (device, batch): the largest ratio between the two schedules at the same sparsity.

    one_shot_X and iterative_X have the same sparsity and nearly the same masks (the report's
    iterative schedule without fine-tuning), so every engine does the same work for both; the
    largest max/min of their medians, over engines and sparsities, is what the machine's noise
    alone does to a ratio in this run (1.0 = none): the bar a speedup must clear to count.
    """
    out = {}
    for key, models in latency_table(results).items():
        ratios = [max(models[a][e]["median_ms"], models[b][e]["median_ms"])
                  / min(models[a][e]["median_ms"], models[b][e]["median_ms"])
                  for a, b in zip(ONE_SHOT, ITERATIVE) if a in models and b in models
                  for e in models[a] if e in models[b]]
        if ratios:
            out[key] = max(ratios)
    return out


def cuda_speedups(results: dict) -> list[dict]:
    """Per batch, model and engine of the CUDA run: median (IQR) ms and the speedup over the
    best dense engine of that model (fp32: eager or CUDA graph; the fp16 2:4 model: cuDNN or
    im2col GEMM) and over the same-path dense GEMM, as medians of per-pass ratios with range."""
    cuda = results.get("cuda")
    if not cuda:
        return []
    table: dict = {}
    for r in cuda["latency"]:
        table.setdefault((r["batch"], r["model"]), {})[r["engine"]] = r
    out = []
    for (batch, model), engines in sorted(table.items()):
        group = FP16_DENSE if model == "semi_2_4" else CUDA_DENSE
        dense = [(e, engines[e]["median_ms"]) for e in group if e in engines]
        best = min(dense, key=lambda d: d[1])[0] if dense else None
        for engine, row in engines.items():
            vs_best = paired_ratio(engines[best], row) if best else None
            vs_gemm = paired_ratio(engines["fp16-gemm"], row) if "fp16-gemm" in engines else None
            out.append({"batch": batch, "model": model, "engine": engine, "median_ms": row["median_ms"],
                        "iqr_ms": row["iqr_ms"], "rounds": row["rounds"], "passes": row.get("passes", 1),
                        "sparsity": row.get("sparsity"), "best_dense_engine": best,
                        "speedup_vs_best_dense": vs_best[0] if vs_best else None,
                        "speedup_vs_best_dense_range": list(vs_best[1:]) if vs_best else None,
                        "speedup_vs_dense_gemm": vs_gemm[0] if vs_gemm else None,
                        "graph": row.get("graph"), "backend": row.get("semi_structured_backend"),
                        "layers_2_4": row.get("layers_2_4")})
    return out


def cuda_findings(results: dict) -> list[str]:
    """What the CUDA run says about the claims, computed from its rows (empty without one)."""
    rows = cuda_speedups(results)
    if not rows:
        return []
    gpu = results["cuda"]["machine"].get("gpu") or "GPU"
    lines = []
    dense = [r for r in rows if r["engine"] in CUDA_DENSE and r["model"] != "unpruned"]
    unpruned = {(r["batch"], r["engine"]): r["median_ms"] for r in rows if r["model"] == "unpruned"}
    ratios = [unpruned[(r["batch"], r["engine"])] / r["median_ms"] for r in dense if (r["batch"], r["engine"]) in unpruned]
    if ratios:
        lines.append(f"CUDA ({gpu}, separate run): dense engines run the pruned models at {min(ratios):.2f}–"
                     f"{max(ratios):.2f}× the speed of the unpruned one (zeros cost a GPU the same).")
    csr = [r for r in rows if r["engine"] == "torch-csr" and r["model"] != "unpruned" and r["speedup_vs_best_dense"]]
    if csr:
        best = max(csr, key=lambda r: r["speedup_vs_best_dense"])
        lines.append(f"CUDA ({gpu}): torch.sparse CSR (cuSPARSE) on the report's unstructured masks runs at "
                     f"{min(r['speedup_vs_best_dense'] for r in csr):.2f}–{best['speedup_vs_best_dense']:.2f}× the "
                     f"speed of the best dense engine (best case {best['model']}, batch {best['batch']}).")
    semi = [r for r in rows if r["engine"].startswith("fp16-2:4") and r["speedup_vs_best_dense"]]
    if semi:
        lines.append(f"CUDA ({gpu}): 2:4 semi-structured sparsity (beyond the report, fp16) runs at "
                     f"{min(r['speedup_vs_best_dense'] for r in semi):.2f}–"
                     f"{max(r['speedup_vs_best_dense'] for r in semi):.2f}× the speed of the best fp16 dense engine "
                     f"and {min(r['speedup_vs_dense_gemm'] for r in semi):.2f}–"
                     f"{max(r['speedup_vs_dense_gemm'] for r in semi):.2f}× that of the same im2col GEMM with dense "
                     "weights.")
    return lines


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:.1f} MB"


def _range(goal: dict) -> str:
    low, high = goal["speedup_range"]
    return f" ({low:.2f}–{high:.2f})" if goal.get("paired") else ""


def _fallback_passes(used: str | None) -> str:
    """"all" when the sparse engine ran its onnxruntime fallback in every pass, "some" when in
    some ("onnxruntime+sparse", as ``latency_rows`` joins the passes), else ""."""
    if used == "onnxruntime":
        return "all"
    return "some" if "onnxruntime" in (used or "") else ""


def _layer_counts(value: int | list[int] | None) -> str:
    """A per-pass layer count as "k" or "k1–k2" where passes chose differently ("" for none)."""
    values = value if isinstance(value, list) else [value or 0]
    lo, hi = min(values, default=0), max(values, default=0)
    return "" if hi == 0 else (f"{lo}" if lo == hi else f"{lo}–{hi}")


def _layer_marks(raw: dict) -> str:
    """Latency-cell marks of the layers the native engine ran otherwise than sparse: "W k"
    Winograd, "‡k" dense oneDNN."""
    marks = []
    if _layer_counts(raw.get("winograd_layers")):
        marks.append(f"W{_layer_counts(raw.get('winograd_layers'))}")
    if _layer_counts(raw.get("dense_layers")):
        marks.append(f"‡{_layer_counts(raw.get('dense_layers'))}")
    return (" " + " ".join(marks)) if marks else ""


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def claims(results: dict) -> list[dict]:
    """The source report's claims, each with the measured figures and a computed verdict."""
    models = results["models"]
    pruned = [m for m in models if m != "unpruned"]
    sp = [s for s in speedups(results) if s["device"] == "cpu"]
    out = []

    # 1. speed
    noise = noise_floor(results)

    def threshold(s: dict) -> float:
        return max(SIGNIFICANT_SPEEDUP, noise.get((s["device"], s["batch"]), 1.0))

    dense_rows = [s for s in sp if s["engine"] in DENSE_ENGINES and s["model"] != "unpruned"]
    dense_best = max(dense_rows, key=lambda s: s["speedup_vs_same_engine_unpruned"] or 0, default=None)
    sparse_rows = [s for s in sp if s["engine"] == "sparse" and s["model"] != "unpruned"]
    sparse_wins = [s for s in sparse_rows if (s["speedup_vs_best_dense_unpruned_min"] or 0) >= threshold(s)
                   and (s["speedup_vs_same_engine_unpruned_min"] or 0) >= threshold(s)]
    lines = [f"Noise of this run: one-shot and iterative models of the same sparsity cost every engine the same work, "
             f"yet their medians differ by up to {_x(r)} at batch {b} ({d}); a speedup counts only above that."
             for (d, b), r in sorted(noise.items())]
    if dense_best:
        above = (dense_best["speedup_vs_same_engine_unpruned_min"] or 0) >= threshold(dense_best)
        lines.append(f"Dense engines multiply zeros like any number: the best pruned/unpruned ratio over every dense case "
                     f"is {_x(dense_best['speedup_vs_same_engine_unpruned'])} ({dense_best['model']}, "
                     f"{ENGINE_LABELS[dense_best['engine']]}, batch {dense_best['batch']}; lowest pass "
                     f"{_x(dense_best['speedup_vs_same_engine_unpruned_min'])}), "
                     f"{'above' if above else 'not above'} this run's noise in every pass.")
    for s in sorted(sparse_rows, key=lambda s: (s["batch"], s["model"])):
        own = s["speedup_vs_same_engine_unpruned"]
        lines.append(f"cnnprune sparse, {s['model']}, batch {s['batch']}: {s['median_ms']:.2f} ms, "
                     f"{_x(s['speedup_vs_best_dense_unpruned'])} (lowest pass {_x(s['speedup_vs_best_dense_unpruned_min'])}) "
                     "vs the best dense engine on the unpruned model "
                     f"(FLOP limit {_x(s['flop_limit'])}; ran: {s['sparse_engine_used']}"
                     + (f"; pruning alone, vs the same engine on the unpruned model: {_x(own)}, lowest pass "
                        f"{_x(s['speedup_vs_same_engine_unpruned_min'])}" if own else "") + ").")
    lines += cuda_findings(results)
    dense_sig = [s for s in dense_rows if (s["speedup_vs_same_engine_unpruned_min"] or 0) >= threshold(s)]
    if dense_sig:
        verdict = "holds"
    elif sparse_wins:
        names = sorted({f"{s['model']} (batch {s['batch']})" for s in sparse_wins})
        verdict = "holds only for the cnnprune sparse engine: " + ", ".join(names)
    else:
        verdict = "does not hold"
    out.append({"claim": "pruning \"speeds up the model significantly\"", "measured": lines, "verdict": verdict,
                "rule": f"significant = at least {SIGNIFICANT_SPEEDUP}× faster than the best dense engine running the "
                        "unpruned model (median latency, CPU, same threads), and more than the run's noise spread, "
                        "in every pass (the lowest per-pass ratio clears the bar); for the cnnprune engine also "
                        "against itself running the unpruned model, since its Winograd layers speed that up too"})

    # 2. resources
    lines, dense_less, sparse_less = [], [], []
    batch = str(max(int(b) for b in models["unpruned"]["memory"]["dense"]))
    base = models["unpruned"]["memory"]["dense"][batch]["peak_rss"]
    for m in pruned:
        mem = models[m]["memory"]
        d, s = mem["dense"][batch]["peak_rss"] / base, mem["sparse"][batch]["peak_rss"] / base
        w = mem["sparse"][batch].get("weights_in_memory")
        wd = models["unpruned"]["memory"]["dense"][batch].get("weights_in_memory")
        lines.append(f"{m}: peak RSS dense {_mb(mem['dense'][batch]['peak_rss'])} ({_x(d)} of unpruned), "
                     f"sparse {_mb(mem['sparse'][batch]['peak_rss'])} ({_x(s)}); weights in memory "
                     f"sparse {_mb(w)} vs dense {_mb(wd)}.")
        if d <= LESS_MEMORY:
            dense_less.append(m)
        if s <= LESS_MEMORY:
            sparse_less.append(m)
    if dense_less:
        verdict = "holds"
    elif sparse_less:
        verdict = "holds only for the cnnprune sparse form: " + ", ".join(sparse_less)
    else:
        wd = models["unpruned"]["memory"]["dense"][batch].get("weights_in_memory")
        ratios = {m: models[m]["memory"]["sparse"][batch].get("weights_in_memory") / wd for m in pruned
                  if wd and models[m]["memory"]["sparse"][batch].get("weights_in_memory")}
        verdict = "does not hold for the process as a whole (runtime libraries dominate peak RSS)"
        fewer = [m for m, r in ratios.items() if r < 1]
        if ratios:
            span = f"{min(ratios.values()):.2f}–{max(ratios.values()):.2f}× of dense"
            if len(fewer) == len(ratios):
                verdict += f"; the weights held shrink only in the sparse form ({span})"
            elif fewer:
                verdict += (f"; the sparse form holds fewer weight bytes than dense only for {', '.join(fewer)} "
                            f"({span}: Winograd layers hold transformed weights, 4× their dense size)")
            else:
                verdict += f"; the sparse form holds no fewer weight bytes than dense ({span})"
    out.append({"claim": "pruning gives \"less resource usage\"", "measured": lines, "verdict": verdict,
                "rule": f"less = peak RSS of a fresh process (load + {results['memory_runs']} inferences at batch "
                        f"{batch}) at most {LESS_MEMORY:.0%} of the unpruned dense model's"})

    # 3. lighter
    lines, light = [], {}
    ub = models["unpruned"]["files"]
    for m in pruned:
        f = models[m]["files"]
        ratios = {k: f[k] / ub["dense"] for k in f}
        lines.append(f"{m}: " + ", ".join(f"{k} {_mb(f[k])} ({_x(ratios[k])})" for k in f)
                     + f"; nonzero parameters {models[m]['counts']['params_nonzero']:,} of "
                       f"{models[m]['counts']['params_total']:,}.")
        for k, r in ratios.items():
            if r <= MUCH_LIGHTER:
                light.setdefault(k, []).append(m)
    dense_light = "dense" in light or "onnx" in light
    if dense_light:
        verdict = "holds"
    elif light:
        verdict = "holds only for the compact sparse file (csr): " + ", ".join(light["csr"])
    else:
        verdict = "does not hold"
    out.append({"claim": "pruning gives \"a much lighter model\"", "measured": lines, "verdict": verdict,
                "rule": f"much lighter = file at most {MUCH_LIGHTER:.0%} of the unpruned dense .pth; a dense file of a "
                        "pruned model stores its zeros"})

    # 4. accuracy table
    acc = {m: models[m]["accuracy"]["dense"]["accuracy"] for m in models}
    lines = [f"{m}: {_pct(acc[m])} measured ({results['dataset']}, {results['test_images']:,} images), "
             f"Δ {100 * (acc[m] - acc['unpruned']):+.2f} pp; report {REPORT_ACCURACY_CIFAR10[m]:.3f}% "
             f"(CIFAR-10, k/{REPORT_TEST_IMAGES})" for m in models]
    drops = {m: 100 * (acc["unpruned"] - acc[m]) for m in pruned}
    kept = [m for m in pruned if drops[m] <= ACCURACY_KEPT_PP]
    lost = [m for m in pruned if drops[m] > ACCURACY_KEPT_PP]
    verdict = "holds" if not lost else f"holds only for {', '.join(kept) or 'none'}; not for {', '.join(lost)}"
    out.append({"claim": "the accuracy table: pruning to 50/75/90 % keeps accuracy (report: "
                         f"{REPORT_ACCURACY_CIFAR10['unpruned']}% unpruned, {REPORT_ACCURACY_CIFAR10['one_shot_90']}% at "
                         "90 % one-shot)", "measured": lines, "verdict": verdict,
                "rule": f"kept = at most {ACCURACY_KEPT_PP} pp below the unpruned model, same dataset, all test images"})

    # 5. iterative vs one-shot
    agree = results.get("mask_agreement_one_shot_vs_iterative", {})
    lines, differ = [], []
    for one, it in zip(ONE_SHOT, ITERATIVE):
        if one in acc and it in acc:
            t = one.split("_")[-1]
            test = results.get("one_shot_vs_iterative", {}).get(t, {}).get("p_value", float("nan"))
            lines.append(f"{t}%: iterative {_pct(acc[it])} vs one-shot {_pct(acc[one])} "
                         f"(Δ {100 * (acc[it] - acc[one]):+.2f} pp, McNemar p = {test:.2f}); masks identical on "
                         f"{_pct(agree.get(t, float('nan')))} of weights")
            if test < 0.05:
                differ.append(t)
    verdict = ("no measurable difference: without fine-tuning between steps, iterative pruning is one-shot "
               "pruning up to rounding" if not differ else f"differs at {', '.join(differ)} %")
    if results.get("finetune"):
        ft = results["finetune"]
        lines.append(f"with {ft['epochs_per_step']} epoch(s) of fine-tuning after each step (beyond the report): "
                     f"iterative_90 {_pct(ft['accuracy'])} at sparsity {_pct(ft['sparsity'])} vs "
                     f"{_pct(acc.get('iterative_90', float('nan')))} without")
    out.append({"claim": "\"iterative vs one-shot\": the two schedules compared", "measured": lines, "verdict": verdict,
                "rule": "difference = exact McNemar test on paired per-image correctness, p < 0.05"})

    # 6. generalisation
    lines, better = [], []
    for m in pruned:
        t = models[m]["vs_unpruned"]
        lines.append(f"{m}: {t['only_other_correct']} images right only after pruning, "
                     f"{t['only_baseline_correct']} only before; McNemar p = {t['p_value']:.3f}")
        if t["only_other_correct"] > t["only_baseline_correct"] and t["p_value"] < 0.05:
            better.append(m)
    lines.append(f"the report's own evidence: {REPORT_ACCURACY_CIFAR10['one_shot_50']}% vs "
                 f"{REPORT_ACCURACY_CIFAR10['unpruned']}% = "
                 f"{round((REPORT_ACCURACY_CIFAR10['one_shot_50'] - REPORT_ACCURACY_CIFAR10['unpruned']) / 100 * REPORT_TEST_IMAGES)} "
                 f"more correct images out of {REPORT_TEST_IMAGES:,}")
    out.append({"claim": "\"pruning improves generalisation\"", "measured": lines,
                "verdict": "holds for " + ", ".join(better) if better else "does not hold (no significant gain)",
                "rule": "improves = more test images right after pruning than before, exact McNemar p < 0.05"})
    return out


# ------------------------------------------------------------------ plots and markdown


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def plots(results: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    models = results["models"]
    table = latency_table(results)
    for (device, batch), per_model in sorted(table.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for schedule in (ONE_SHOT, ITERATIVE):
            seq = [m for m in ("unpruned", *schedule) if m in per_model]
            for engine in ("torch", "onnxruntime", "sparse", "torch-csr"):
                pts = [(models[m]["sparsity"], per_model[m][engine]["median_ms"]) for m in seq if engine in per_model[m]]
                if len(pts) > 1 and schedule is ONE_SHOT:
                    ax.plot(*zip(*pts), marker="o", label=ENGINE_LABELS[engine])
        ax.set_yscale("log")
        ax.set_xlabel("global sparsity of conv+linear weights (one-shot)")
        ax.set_ylabel("median latency (ms, log)")
        ax.set_title(f"{device}, batch {batch}, {results['machine']['threads']} threads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        name = f"latency_{device}_b{batch}.png"
        _savefig(fig, folder / name)
        plt.close(fig)
        names.append(name)
    cuda = [r for r in cuda_speedups(results) if r["model"] != "semi_2_4"]
    if cuda:
        batches = sorted({r["batch"] for r in cuda})
        fig, axes = plt.subplots(1, len(batches), figsize=(4 * len(batches), 3.6), squeeze=False)
        for ax, batch in zip(axes[0], batches):
            for engine in ("torch", "cuda-graph", "torch-csr"):
                pts = sorted((r["sparsity"], r["median_ms"]) for r in cuda if r["batch"] == batch
                             and r["engine"] == engine and r["model"] in ("unpruned", *ONE_SHOT))
                if len(pts) > 1:
                    ax.plot(*zip(*pts), marker="o", label=CUDA_LABELS[engine])
            ax.set_yscale("log")
            ax.set_xlabel("global sparsity (one-shot)")
            ax.set_title(f"cuda, batch {batch}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("median latency (ms, log)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(results["cuda"]["machine"].get("gpu") or "GPU", fontsize=9, y=1.04)
        _savefig(fig, folder / "latency_cuda.png")
        plt.close(fig)
        names.append("latency_cuda.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for schedule, label in ((ONE_SHOT, "one-shot"), (ITERATIVE, "iterative")):
        seq = [m for m in ("unpruned", *schedule) if m in models]
        ax.plot([models[m]["sparsity"] for m in seq], [100 * models[m]["accuracy"]["dense"]["accuracy"] for m in seq],
                marker="o", label=f"{label} (measured, {results['dataset']})")
        ax.plot([0.0, 0.5, 0.75, 0.9][: len(seq)],
                [REPORT_ACCURACY_CIFAR10[m] for m in seq], linestyle="--", marker="x",
                label=f"{label} (report, CIFAR-10, quoted)")
    ax.set_xlabel("global sparsity")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, folder / "accuracy.png")
    plt.close(fig)
    names.append("accuracy.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    ms = list(models)
    forms = ["dense", "onnx", "csr"]
    for i, f in enumerate(forms):
        ax.bar([j + (i - 1) * 0.27 for j in range(len(ms))], [models[m]["files"].get(f, 0) / 1e6 for m in ms],
               width=0.27, label={"dense": "dense .pth", "onnx": ".onnx", "csr": "compact CSR .csr.pt"}[f])
    ax.set_xticks(range(len(ms)))
    ax.set_xticklabels(ms, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("file size (MB)")
    ax.legend(fontsize=8)
    _savefig(fig, folder / "sizes.png")
    plt.close(fig)
    names.append("sizes.png")
    return names


def reproduce_command(config: dict) -> str:
    """The ``run_bench.sh`` command line of this run: the options that differ from the defaults."""
    from cnnprune.pipeline import PipelineConfig

    default = PipelineConfig()
    flags = {"dataset": "--dataset", "data_dir": "--data-dir", "checkpoint": "--checkpoint", "threads": "--threads",
             "rounds": "--rounds", "passes": "--passes", "eval_limit": "--eval-limit", "memory_runs": "--memory-runs",
             "finetune_epochs": "--finetune-epochs"}
    parts = ["bash run_bench.sh"]
    for key, flag in flags.items():
        value = config.get(key, getattr(default, key))
        if value != getattr(default, key):
            parts.append(f"{flag} {value}")
    if config.get("cuda_bench", default.cuda_bench) != default.cuda_bench:
        parts.append(f"--cuda-bench {config['cuda_bench']}")
    batches = tuple(config.get("batches", default.batches))
    if batches != default.batches:
        parts.append(f"--batches {','.join(map(str, batches))}")
    return " ".join(parts)


def cuda_markdown(results: dict) -> list[str]:
    """The CUDA section: a separate run's figures, with where, when and how they were taken."""
    cuda = results.get("cuda")
    if not cuda:
        return []
    m, info = cuda["machine"], cuda["machine"].get("cuda_info") or {}
    rows = cuda_speedups(results)
    L = [f"## CUDA: a separate run on {m.get('gpu')}\n"]
    rounds = sorted({r["rounds"] for r in rows})
    passes = max(r["passes"] for r in rows)
    L.append(f"- Where: {m.get('gpu')} (compute capability {info.get('capability')}, driver {info.get('driver')}), "
             f"CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')}, PyTorch {m.get('torch')}; host {m.get('cpu_model')}. "
             "This is not the CPU machine of the sections above: its figures are compared with each other only.")
    L.append(f"- When and how: {cuda.get('datetime')}, commit `{m.get('commit')}`, `{m.get('command')}` "
             f"(`bash bench/cuda.sh`; pytest-benchmark {cuda.get('pytest_benchmark')}), read from `{cuda.get('source')}`.")
    L.append(f"- Timing: one forward pass per round, `torch.cuda.synchronize()` inside the timed call; "
             f"{'/'.join(map(str, rounds))} timed rounds in all over {passes} passes after ≥2 warm-up rounds and an "
             f"untimed first call (cuDNN autotuning on: `cudnn.benchmark` = {info.get('cudnn_benchmark')}); "
             "median (IQR) in ms; speedups are medians of per-pass ratios. fp32 engines run with PyTorch's defaults: "
             f"cuDNN convolutions may use TF32 (`cudnn.allow_tf32` = {info.get('cudnn_allow_tf32')}), matmuls "
             f"(`matmul.allow_tf32` = {info.get('matmul_allow_tf32')}) and cuSPARSE do not. The CUDA graph engine "
             "replays the eager model captured once per batch size (no launch cost per kernel).\n")
    fp32 = [r for r in rows if r["model"] != "semi_2_4"]
    engines = [e for e in ("torch", "cuda-graph", "torch-csr") if any(r["engine"] == e for r in fp32)]
    sparsity = {r["model"]: r["sparsity"] for r in fp32 if r.get("sparsity") is not None}
    for batch in sorted({r["batch"] for r in fp32}):
        L.append(f"### CUDA, fp32, batch {batch}\n")
        L.append("| model | sparsity | " + " | ".join(f"{CUDA_LABELS[e]} ms" for e in engines)
                 + " | CSR speed vs best dense |")
        L.append("|---|---:|" + "---:|" * len(engines) + "---:|")
        for model in [n for n in results["models"] if any(r["model"] == n and r["batch"] == batch for r in fp32)]:
            cells, csr = [], None
            for e in engines:
                r = next((r for r in fp32 if r["model"] == model and r["batch"] == batch and r["engine"] == e), None)
                cells.append(f"{r['median_ms']:.3f} ({r['iqr_ms']:.3f})" if r else "–")
                csr = r if e == "torch-csr" else csr
            low, high = csr["speedup_vs_best_dense_range"] if csr and csr["speedup_vs_best_dense_range"] else (0, 0)
            ratio = f"{_x(csr['speedup_vs_best_dense'])} ({low:.2f}–{high:.2f})" if csr else "–"
            L.append(f"| {model} | {_pct(sparsity.get(model, 0.0))} | " + " | ".join(cells) + f" | {ratio} |")
        L.append("")
    L.append("CSR speed vs best dense = time of the faster dense engine (eager or CUDA graph) on the same model / time "
             "of torch.sparse CSR; below 1× it is slower. Dense engines multiply the zeros of the report's "
             "unstructured masks like any number, and cuSPARSE cannot turn 50–90 % scattered zeros into speed at "
             "these sizes.\n")

    semi = [r for r in rows if r["model"] == "semi_2_4"]
    if semi:
        s24 = results.get("semi_2_4") or {}
        engines = [e for e in ("fp16-cudnn", "fp16-gemm", "fp16-2:4", "fp16-2:4-cutlass") if any(r["engine"] == e for r in semi)]
        L.append("### What a GPU needs: 2:4 semi-structured sparsity (beyond the report)\n")
        acc = results["models"]["unpruned"]["accuracy"]["dense"]["accuracy"]
        if s24:
            t = s24["vs_unpruned"]
            L.append(f"The unpruned checkpoint pruned 2:4 by magnitude (in every 4 consecutive weights of a row of the "
                     f"im2col GEMM the 2 smallest are zeroed; the 3-channel stem, 27 weights per row, stays dense), "
                     f"without fine-tuning: sparsity {_pct(s24['sparsity'])}, {s24['params_nonzero']:,} of "
                     f"{s24['params_total']:,} parameters nonzero, FLOP limit {_x(s24['flop_limit_speedup'])}; "
                     f"top-1 {_pct(s24['accuracy'])} vs {_pct(acc)} unpruned ({results['dataset']}, CPU, fp32, "
                     f"{results['test_images']:,} images; McNemar p = {t['p_value']:.3f}). Timed in fp16, every "
                     "engine replayed from a CUDA graph so that host work (kernel launches, cuSPARSELt's per-call "
                     "planning) is out and GPU time is compared.\n")
        L.append("| batch | " + " | ".join(f"{CUDA_LABELS[e]} ms" for e in engines)
                 + " | 2:4 speed vs dense GEMM | 2:4 speed vs best fp16 dense |")
        L.append("|---:|" + "---:|" * len(engines) + "---:|---:|")
        for batch in sorted({r["batch"] for r in semi}):
            by = {r["engine"]: r for r in semi if r["batch"] == batch}
            cells = [f"{by[e]['median_ms']:.3f} ({by[e]['iqr_ms']:.3f})" + ("" if by[e]["graph"] is True else " ◊")
                     if e in by else "–" for e in engines]
            sp = next((by[e] for e in ("fp16-2:4", "fp16-2:4-cutlass") if e in by), None)
            L.append(f"| {batch} | " + " | ".join(cells) + f" | {_x(sp['speedup_vs_dense_gemm'] if sp else None)} | "
                     f"{_x(sp['speedup_vs_best_dense'] if sp else None)} |")
        layers = next((r["layers_2_4"] for r in semi if r["layers_2_4"]), 0)
        L.append(f"\n{layers} of the 20 convolutions ran as 2:4 GEMMs (the stem and fc dense). ◊ = capture in a CUDA "
                 "graph failed and the case ran eager. PyTorch's CUTLASS 2:4 kernels run only on compute capability "
                 "8.x, so on other GPUs that engine is skipped.\n")
    return L


def markdown(results: dict, plot_names: list[str]) -> str:
    m, models = results["machine"], results["models"]
    bi = results.get("benchmark_machine_info", {})
    cfg = results["config"]
    L: list[str] = []
    L.append("# Does pruning make this ResNet18 faster, smaller and lighter? Measured.\n")
    L.append(f"Generated {results['generated']} by `bash run_bench.sh` (cnnprune). Every figure below is read from "
             f"`results.json` of this run; every verdict is computed from those figures by the rule stated with it.\n")
    L.append("## How it was measured\n")
    L.append(f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; **{m['threads']} threads for every engine**; "
             f"GPU: {m['gpu'] or 'none (CUDA cases skipped)'}"
             + (f"; the CUDA figures come from a separate run on {results['cuda']['machine'].get('gpu')} "
                "(section CUDA)." if results.get("cuda") else "."))
    L.append(f"- Software: Python {m['python']}, PyTorch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, "
             f"NumPy {m['numpy']}; {m['platform']}.")
    L.append(f"- Model: the report's CIFAR ResNet18 (3×3 stride-1 conv1, maxpool kept, 11,173,962 parameters), "
             f"checkpoint `{Path(results['source_checkpoint']['path']).name}` (sha256 "
             f"`{results['source_checkpoint']['sha256'][:16]}…`).")
    L.append(f"- Data: {results['dataset']}, accuracy on **all {results['test_images']:,} test images** "
             f"(the report used CIFAR-10 and {REPORT_TEST_IMAGES:,} of its 10,000 test images; its numbers are quoted, "
             "never mixed with ours).")
    rounds = sorted({r["rounds"] for r in results["latency"]})
    passes = max((r.get("passes", 1) for r in results["latency"]), default=1)
    L.append(f"- Latency: pytest-benchmark, one forward pass per round on a fixed random input, "
             f"{'/'.join(map(str, rounds))} timed rounds in all after ≥2 warm-up rounds and one untimed first call "
             "(planning, calibration); reported as **median (IQR)** in ms over all rounds. Batch sizes "
             f"{', '.join(map(str, cfg['batches']))}. Compare ratios within this run only.")
    if passes > 1:
        L.append(f"- Passes: the matrix ran {passes} times, every engine loaded afresh each time (the sparse engine "
                 "calibrates again); within a pass the engines of one model and batch ran back to back, seconds "
                 "apart. A speedup is the **median of the per-pass ratios** (so the machine's slow drift cancels); "
                 "the goals table gives its range over passes.")
    noise = noise_floor(results)
    if noise:
        L.append("- Noise: one-shot and iterative models of the same sparsity cost every engine the same work; their "
                 "medians differ by up to " + ", ".join(f"{_x(r)} at batch {b} ({d})" for (d, b), r in sorted(noise.items()))
                 + " in this run. Ratios closer to 1 than that are not resolved by this run.")
    L.append(f"- Memory: peak RSS (VmHWM) of a fresh Python process that imports every engine, loads one form and "
             f"runs {results['memory_runs']} inferences at batch {max(cfg['batches'])}; the sparse form is measured "
             "without its in-memory dense fallback. Weights in memory are the bytes of the loaded tensors.")
    L.append("- Forms: `dense` = permanent state_dict in PyTorch eager; `onnx` = onnxruntime CPU; `sparse` = "
             "`cnnprune.sparse.load` (BatchNorm folded, native sparse direct convolution, per-layer choice of "
             "sparse, Winograd or dense oneDNN by timing, dense onnxruntime fallback unless the whole sparse net is at least 5 % faster); `torch-csr` = naive "
             "`torch.sparse` CSR × im2col.\n")

    L.append("## The report's claims\n")
    for c in claims(results):
        L.append(f"### {c['claim']}\n")
        L.append(f"**Verdict: {c['verdict']}.**  \n_Rule: {c['rule']}._\n")
        for line in c["measured"]:
            L.append(f"- {line}")
        L.append("")

    L.append("## Latency\n")
    sp = speedups(results)
    for (device, batch) in sorted({(s["device"], s["batch"]) for s in sp}):
        rows = [s for s in sp if s["device"] == device and s["batch"] == batch]
        engines = [e for e in ("torch", "onnxruntime", "sparse", "torch-csr") if any(r["engine"] == e for r in rows)]
        L.append(f"### {device}, batch {batch}\n")
        L.append("| model | sparsity | " + " | ".join(f"{ENGINE_LABELS[e]} ms" for e in engines)
                 + " | sparse speedup vs best dense | of FLOP limit | sparse: unpruned / pruned |")
        L.append("|---|---:|" + "---:|" * len(engines) + "---:|---:|---:|")
        for model in models:
            cells = []
            sparse_row = None
            for e in engines:
                r = next((r for r in rows if r["model"] == model and r["engine"] == e), None)
                cell = f"{r['median_ms']:.2f} ({r['iqr_ms']:.2f})" if r else "–"
                if e == "sparse" and r:
                    sparse_row = r
                    raw = next(x for x in results["latency"] if x["model"] == model and x["engine"] == "sparse"
                               and x["batch"] == batch and x["device"] == device)
                    fallback = _fallback_passes(raw.get("sparse_engine_used"))
                    if fallback:
                        cell += " †" if fallback == "all" else " (†)"
                    else:
                        cell += _layer_marks(raw)
                cells.append(cell)
            sp_s = _x(sparse_row["speedup_vs_best_dense"]) if sparse_row else "–"
            frac = f"{sparse_row['fraction_of_flop_limit']:.0%} of {_x(sparse_row['flop_limit'])}" \
                if sparse_row and sparse_row["fraction_of_flop_limit"] else "–"
            own = _x(sparse_row["speedup_vs_same_engine_unpruned"]) \
                if sparse_row and model != "unpruned" and sparse_row["speedup_vs_same_engine_unpruned"] else "–"
            L.append(f"| {model} | {_pct(models[model]['sparsity'])} | " + " | ".join(cells)
                     + f" | {sp_s} | {frac} | {own} |")
        L.append("")
    L.append("Speedup vs best dense = the faster of PyTorch eager and onnxruntime on the same model, same run, "
             "same threads, divided by the sparse engine's time (per pass, median over passes). FLOP limit = dense MACs / nonzero MACs, "
             "both counting the products with the zero border that dense engines compute. "
             "† = the sparse engine measured its sparse path slower than dense onnxruntime at this batch size and "
             "ran onnxruntime; (†) = in some passes; Wk = k of its 20 convolutions ran Winograd F(4x4, 3x3), "
             "‡k = k ran dense oneDNN, because that was faster (k1–k2: passes chose differently). Winograd is a "
             "dense algorithm (4x fewer multiplies than a direct convolution, for the densest layers): it can take "
             "the speedup past 100 % of the FLOP limit, and it speeds up the unpruned model too; so can the sparse "
             "kernel's skipping of the taps that read only the zero border (most of layer4's at its 2x2 maps). Pruning's own "
             "share is the last column: the same engine's time on the unpruned model over its time on this one.\n")

    goals = sparse_goals(results)
    if goals:
        L.append("### The sparse engine against its goals\n")
        L.append("| model | batch | goal vs best dense | measured | FLOP limit | pruning alone | verdict |")
        L.append("|---|---:|---:|---:|---:|---:|---|")
        for g in goals:
            verdict = "met" if g["met"] else "not met"
            if g["above_flop_limit"]:
                verdict += " (the goal is above this model's FLOP limit)"
            if g["within_noise"]:
                verdict += "; the difference is within this run's noise"
            fallback = _fallback_passes(g["sparse_engine_used"])
            if fallback:
                verdict += "; ran the dense fallback" + ("" if fallback == "all" else " in some passes")
            L.append(f"| {g['model']} | {g['batch']} | {'never slower' if g['goal'] == 1.0 else _x(g['goal'])} | "
                     f"{_x(g['speedup'])}{_range(g)} | {_x(g['flop_limit'])} | {_x(g['pruning_alone'])} | {verdict} |")
        L.append("\nPruning alone = the same engine's time on the unpruned model over its time on this model: "
                 "what the pruning itself buys inside the engine, Winograd and kernels being equal.")
        if any(g["paired"] for g in goals):
            L.append("Measured = median of the per-pass ratios (range over passes). \"Never slower\" = not slower in "
                     "every pass; \"within noise\" = the range over passes includes 1.\n")
        else:
            L.append("\n\"Never slower\" = the sparse median is within the best dense engine's median + IQR of this run.\n")

    L += cuda_markdown(results)
    L.append("## Accuracy and agreement between forms\n")
    L.append(f"| model | dense | onnx | sparse | max \\|logit diff\\| vs dense | top-1 agreement | "
             f"report (CIFAR-10, k/{REPORT_TEST_IMAGES}, quoted) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for name, e in models.items():
        a = e["accuracy"]
        diff = max(a[f].get("max_abs_logit_diff_vs_dense", 0.0) for f in a)
        agree = min(a[f].get("top1_agreement_with_dense", 1.0) for f in a)
        L.append(f"| {name} | {_pct(a['dense']['accuracy'])} | {_pct(a['onnx']['accuracy'])} | "
                 f"{_pct(a['sparse']['accuracy'])} | {diff:.1e} | {_pct(agree)} | "
                 f"{REPORT_ACCURACY_CIFAR10[name]:.3f}% |")
    L.append("")
    if results.get("finetune"):
        ft = results["finetune"]
        L.append(f"Fine-tuning (beyond the report): iterative_90 with {ft['epochs_per_step']} epoch(s) of masked "
                 f"fine-tuning after each of the 5 steps reaches {_pct(ft['accuracy'])} at sparsity "
                 f"{_pct(ft['sparsity'])} (vs {_pct(models['iterative_90']['accuracy']['dense']['accuracy'])} "
                 f"without); it cost {ft['seconds']:.0f} s here.\n")

    L.append("## Size, parameters and memory\n")
    L.append("| model | nonzero / total params | dense .pth | .onnx | .csr.pt | csr / dense | nonzero MACs | "
             "peak RSS dense / onnx / sparse | RSS added by loading dense / onnx / sparse | weights in memory "
             "dense / sparse |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    batch = str(max(cfg["batches"]))
    for name, e in models.items():
        f, c, mem = e["files"], e["counts"], e["memory"]
        L.append(f"| {name} | {c['params_nonzero']:,} / {c['params_total']:,} | {_mb(f['dense'])} | "
                 f"{_mb(f.get('onnx'))} | {_mb(f.get('csr'))} | {f.get('csr', 0) / f['dense']:.1%} | "
                 f"{c['nonzero_macs'] / 1e6:.1f} M of {c['dense_macs'] / 1e6:.1f} M | "
                 + " / ".join(_mb(mem[k][batch]["peak_rss"]) for k in ("dense", "onnx", "sparse")) + " | "
                 + " / ".join(_mb(mem[k][batch]["rss_after_load"] - mem[k][batch]["rss_before_load"])
                              for k in ("dense", "onnx", "sparse")) + " | "
                 f"{_mb(mem['dense'][batch].get('weights_in_memory'))} / "
                 f"{_mb(mem['sparse'][batch].get('weights_in_memory'))} |")
    L.append(f"\nPeak RSS at batch {batch}. Parameters counted as every float tensor except BatchNorm running "
             "statistics. Weights in memory, sparse = what the engine holds after the inferences: its folded weights "
             "in CSR plus, for the batch size run, the operands of each layer's chosen mode (sparse: offsets and "
             "values; Winograd: transformed weights, 4× the layer's dense size).\n")

    L.append("## Plots\n")
    for p in plot_names:
        L.append(f"![{p}]({p})")
    L.append("")
    L.append("## Reproduce\n")
    L.append(f"```\n{reproduce_command(cfg)}   # this report\n"
             "pytest bench --benchmark-autosave   # the timings alone\n```\n")
    L.append("Cost of each step on this machine, in seconds (\"reused\": a valid result of an earlier run with "
             "the same inputs was kept; the figure is what computing it cost then): "
             + ", ".join(f"{k} {v:.0f}" if isinstance(v, (int, float)) else f"{k} {v}"
                         for k, v in results["step_seconds"].items()) + ".\n")
    return "\n".join(L)


def write_report(results: dict, folder: Path) -> Path:
    """Write results.json, the plots and REPORT.md into ``folder`` (each atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", results)
    names = plots(results, folder)
    path = folder / "REPORT.md"
    write_text(path, markdown(results, names))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m cnnprune.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="reports/results.json", help="results.json of a run")
    parser.add_argument("--out", default=None, help="folder for REPORT.md and plots (default: beside --results)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        raise CnnpruneError(f"--results {path} does not exist; run `bash run_bench.sh` first")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CnnpruneError(f"--results {path} is not valid JSON") from None
    print(write_report(results, Path(args.out) if args.out else path.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
