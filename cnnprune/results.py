"""``results.json``: one run's measurements assembled from the pipeline's step outputs.

This module only gathers and merges (benchmark passes, paired accuracy tests); what the figures
mean is derived in :mod:`cnnprune.analysis`.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cnnprune.analysis import ITERATIVE, ONE_SHOT
from cnnprune.schedules import REPORT_ACCURACY_CIFAR10, REPORT_TEST_IMAGES


def _pooled(stats: list[dict]) -> dict:
    """Median, IQR, mean, min and max (ms) over every round of every pass; from the per-pass
    summaries where pytest-benchmark kept no raw data."""
    if all("data" in s for s in stats):
        data = np.concatenate([s["data"] for s in stats]) * 1e3
        q1, med, q3 = np.percentile(data, [25, 50, 75])
        return {"median_ms": float(med), "iqr_ms": float(q3 - q1), "mean_ms": float(data.mean()),
                "min_ms": float(data.min()), "max_ms": float(data.max())}
    return {"median_ms": float(np.median([s["median"] * 1e3 for s in stats])),
            "iqr_ms": float(np.median([s["iqr"] for s in stats])) * 1e3,
            "mean_ms": float(np.mean([s["mean"] for s in stats])) * 1e3,
            "min_ms": min(s["min"] for s in stats) * 1e3, "max_ms": max(s["max"] for s in stats) * 1e3}


def latency_rows(bench: dict) -> list[dict]:
    """One row per case (model, engine, batch, device) from pytest-benchmark's JSON, its passes
    merged (times in ms), with each pass's own median in ``pass_medians_ms`` (pass order)."""
    groups: dict[tuple, list[dict]] = {}
    for b in bench.get("benchmarks", []):
        e = b["extra_info"]
        groups.setdefault((e["model"], e["engine"], e["batch"], e["device"]), []).append(b)
    rows = []
    for runs in groups.values():
        runs.sort(key=lambda b: b["extra_info"].get("pass", 0))
        stats = [b["stats"] for b in runs]
        extra = {k: v for k, v in runs[0]["extra_info"].items() if k != "pass"}
        ran = [b["extra_info"].get("sparse_engine_used") for b in runs]  # per pass; None: not the sparse engine
        if any(r is not None for r in ran):
            extra["sparse_engine_used"] = "+".join(sorted({r for r in ran if r is not None}))
            extra["sparse_engine_passes"] = [r or "" for r in ran]
        for key in ("dense_layers", "winograd_layers"):
            if key in extra:
                extra[key] = [b["extra_info"].get(key, 0) for b in runs]
        if "first_call_s" in extra:  # per pass, where measured (runs before it have none)
            extra["first_call_s"] = [b["extra_info"]["first_call_s"] for b in runs if "first_call_s" in b["extra_info"]]
        rows.append({**extra, **_pooled(stats), "rounds": sum(s["rounds"] for s in stats), "passes": len(runs),
                     "pass_medians_ms": [s["median"] * 1e3 for s in stats], "name": runs[0]["name"]})
    return rows


def mask_agreement(artifacts: Path) -> dict[str, float]:
    """Fraction 0–1 of conv/linear weights pruned identically by one-shot and iterative at each target."""
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


def cuda_summary(bench: dict | None) -> dict | None:
    """A CUDA run's cases merged over passes, with the run's own machine, date and command."""
    if not bench:
        return None
    return {"source": bench.get("path"), "datetime": bench.get("datetime"),
            "pytest_benchmark": bench.get("version"), "machine": bench.get("machine_info", {}).get("cnnprune", {}),
            "latency": latency_rows(bench)}


def _versus(entry: dict | None, unpruned_correct: list[int]) -> dict | None:
    """``entry`` with its per-image correctness replaced by the paired test against the unpruned model."""
    if not entry:
        return entry
    out = {k: v for k, v in entry.items() if k != "correct"}
    if "correct" in entry:
        out["vs_unpruned"] = mcnemar(unpruned_correct, entry["correct"])
    return out


def recalibrated_summary(step: dict | None, unpruned_correct: list[int]) -> dict | None:
    """The BN-recalibrated checkpoints: images used, where from, and per model accuracy, sparsity
    and the paired test against the unpruned model."""
    if not step:
        return None
    return {"images": step["images"], "source": step.get("source"),
            "models": {n: _versus(e, unpruned_correct) for n, e in step["models"].items()}}


def recipes_summary(source: Path, compare: dict | None) -> dict:
    """This run's source model's training recipe and, with ``--compare-checkpoint``, the second
    model's figures, each pruned checkpoint tested against that model's own unpruned one."""
    from cnnprune.recipes import training_recipe

    out: dict = {"source": {"checkpoint": str(source), "recipe": training_recipe(source)}, "compare": None}
    if compare:
        base = compare["unpruned"]["correct"]
        out["compare"] = {**{k: compare[k] for k in ("checkpoint", "sha256", "recipe")},
                          "unpruned": compare["unpruned"]["accuracy"],
                          "models": {n: {"sparsity": e["sparsity"],
                                         **{m: _versus(e[m], base) for m in ("plain", "recalibrated") if m in e}}
                                     for n, e in compare["models"].items()}}
    return out


def _model_entry(name: str, *, counts: dict, export: dict, accuracy: dict, memory: dict, manifest: dict,
                 paired: dict | None) -> dict:
    files = export["models"][name]["files"]
    return {"sparsity": counts["sparsity"],
            "counts": {k: v for k, v in counts.items() if k != "per_layer"},
            "per_layer": counts["per_layer"],
            "files": {k: f["bytes"] for k, f in files.items()},
            "csr_layouts": files.get("csr", {}).get("layouts"),
            "onnx_max_rel_diff": export["models"][name].get("onnx_max_rel_diff"),
            "accuracy": {f: {k: v for k, v in e.items() if k != "predictions"} for f, e in accuracy.items()},
            "vs_unpruned": paired,
            "memory": memory,
            "method": manifest["checkpoints"].get(name, {}).get("method", "unpruned")}


def assemble_results(*, config: dict, machine: dict, manifest: dict, export: dict, bench: dict, accuracy: dict,
                     memory: dict, counts: dict, finetune: dict | None, artifacts: Path,
                     step_seconds: dict, semi_2_4: dict | None = None, cuda_bench: dict | None = None,
                     recalibrated: dict | None = None, compare: dict | None = None) -> dict:
    """``accuracy`` None: not measured (random weights, or no test images made for the network)."""
    acc = accuracy["models"] if accuracy else {}

    def correct(name: str) -> list[int]:
        return acc[name]["dense"]["predictions"]

    models = {n: _model_entry(n, counts=counts[n], export=export, accuracy=acc.get(n, {}), memory=memory["models"][n],
                              manifest=manifest, paired=None if n == "unpruned" or not acc else mcnemar(
                                  correct("unpruned"), correct(n)))
              for n in counts}
    pairwise = {one.split("_")[-1]: mcnemar(correct(one), correct(it))
                for one, it in zip(ONE_SHOT, ITERATIVE) if one in acc and it in acc}
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": config,
        "machine": machine,
        "benchmark_machine_info": bench.get("machine_info", {}).get("cnnprune", {}),
        "source_checkpoint": {"path": manifest["source"], "sha256": manifest["source_sha256"]},
        "model": manifest.get("model"),
        "weights": manifest.get("weights", "checkpoint"),
        "dataset": accuracy["dataset"] if accuracy else None,
        "test_images": accuracy["test_images"] if accuracy else 0,
        "models": models,
        "memory_runs": memory["runs"],
        "latency": latency_rows(bench),
        "mask_agreement_one_shot_vs_iterative": mask_agreement(artifacts) if all(
            m in models for m in ONE_SHOT + ITERATIVE) else {},
        "one_shot_vs_iterative": pairwise,
        "finetune": _versus(finetune, correct("unpruned")) if acc else None,
        "recalibrated_bn": recalibrated_summary(recalibrated, correct("unpruned")) if acc else None,
        "recipes": recipes_summary(Path(manifest["source"]), compare) if acc else None,
        "semi_2_4": _versus(semi_2_4, correct("unpruned")) if acc else None,
        "cuda": cuda_summary(cuda_bench),
        "report_accuracy_cifar10": REPORT_ACCURACY_CIFAR10,
        "report_test_images": REPORT_TEST_IMAGES,
        "step_seconds": step_seconds,
    }
