"""The report generator on a small synthetic results file: verdicts follow the numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cnnprune.report import claims, markdown, noise_floor, reproduce_command, sparse_goals, write_report
from cnnprune.schedules import REPORT_ACCURACY_CIFAR10

MODELS = ("unpruned", "one_shot_50", "one_shot_75", "one_shot_90", "iterative_50", "iterative_75", "iterative_90")
SPARSITY = {"unpruned": 0.0, "one_shot_50": 0.5, "one_shot_75": 0.75, "one_shot_90": 0.9,
            "iterative_50": 0.5016, "iterative_75": 0.7514, "iterative_90": 0.8999}


def _latency(model: str, engine: str, batch: int, ms: float) -> dict:
    return {"model": model, "engine": engine, "batch": batch, "device": "cpu", "threads": 2, "median_ms": ms,
            "iqr_ms": 0.1, "mean_ms": ms, "min_ms": ms, "max_ms": ms, "rounds": 10, "name": "x",
            "sparse_engine_used": "sparse" if engine == "sparse" else None}


def synthetic() -> dict:
    models = {}
    for m in MODELS:
        s = SPARSITY[m]
        mem = {"rss_before_load": 700e6, "rss_after_load": 750e6, "peak_rss": 800e6, "weights_in_memory": 44.7e6}
        models[m] = {
            "sparsity": s,
            "counts": {"params_total": 11173962, "params_nonzero": int(11173962 * (1 - s)),
                       "dense_macs": 140e6, "nonzero_macs": 140e6 * (1 - 0.72 * s), "flop_limit_speedup": 1 / (1 - 0.72 * s)},
            "per_layer": {},
            "files": {"dense": 44.77e6, "onnx": 44.67e6, "csr": 44.77e6 * max(1 - s + 0.03, 0.12)},
            "accuracy": {f: {"accuracy": 0.93 - (0.004 if s > 0.8 else 0.0), "images": 100,
                             "max_abs_logit_diff_vs_dense": 1e-6, "top1_agreement_with_dense": 1.0}
                         for f in ("dense", "onnx", "sparse")},
            "vs_unpruned": None if m == "unpruned" else {"only_baseline_correct": 3, "only_other_correct": 2, "p_value": 1.0},
            "memory": {f: {"32": dict(mem)} for f in ("dense", "onnx", "sparse")},
            "method": m.split("_")[0],
        }
    latency = []
    for m in MODELS:
        for batch, dense in ((1, 2.5), (32, 41.0)):
            latency += [_latency(m, "torch", batch, dense * 3.5), _latency(m, "onnxruntime", batch, dense),
                        _latency(m, "sparse", batch, dense * (1 - 0.7 * SPARSITY[m]))]
    return {"generated": "2026-01-01 00:00 UTC", "config": {"batches": [1, 32]},
            "machine": {"cpu": "Test CPU", "logical_cpus": 2, "threads": 2, "python": "3.11", "torch": "2.x",
                        "onnx": "1", "onnxruntime": "1", "numpy": "2", "gpu": None, "platform": "linux"},
            "source_checkpoint": {"path": "/x/model.pth", "sha256": "0" * 64}, "dataset": "fashion-mnist",
            "test_images": 100, "models": models, "memory_runs": 5, "latency": latency,
            "mask_agreement_one_shot_vs_iterative": {"50": 0.998, "75": 0.998, "90": 1.0},
            "one_shot_vs_iterative": {t: {"only_baseline_correct": 0, "only_other_correct": 0, "p_value": 1.0}
                                      for t in ("50", "75", "90")},
            "finetune": None, "report_accuracy_cifar10": REPORT_ACCURACY_CIFAR10, "report_test_images": 9984,
            "step_seconds": {"prune": 1.0}}


def verdicts(results: dict) -> dict[str, str]:
    return {c["claim"].split('"')[1] if '"' in c["claim"] else c["claim"]: c["verdict"] for c in claims(results)}


def test_synthetic_verdicts() -> None:
    v = verdicts(synthetic())
    assert v["speeds up the model significantly"].startswith("holds only for the cnnprune sparse engine")
    assert "one_shot_90 (batch 32)" in v["speeds up the model significantly"]
    assert v["a much lighter model"].startswith("holds only for the compact sparse file")
    assert v["less resource usage"].startswith("does not hold")
    assert v["pruning improves generalisation"].startswith("does not hold")


def test_verdicts_follow_the_numbers() -> None:
    r = synthetic()
    for row in r["latency"]:
        if row["engine"] == "onnxruntime" and row["model"] == "one_shot_90":
            row["median_ms"] /= 2
    assert verdicts(r)["speeds up the model significantly"] == "holds"
    r = synthetic()
    r["models"]["one_shot_90"]["accuracy"]["dense"]["accuracy"] = 0.80
    acc = next(c for c in claims(r) if c["claim"].startswith("the accuracy table"))
    assert "not for one_shot_90" in acc["verdict"]
    r = synthetic()
    r["models"]["one_shot_50"]["vs_unpruned"] = {"only_baseline_correct": 1, "only_other_correct": 30, "p_value": 1e-6}
    assert verdicts(r)["pruning improves generalisation"] == "holds for one_shot_50"


def test_write_report_files(tmp_path: Path) -> None:
    path = write_report(synthetic(), tmp_path)
    text = path.read_text()
    assert "## The report's claims" in text and "median (IQR)" in text and "2 threads" in text
    assert json.loads((tmp_path / "results.json").read_text())["dataset"] == "fashion-mnist"
    for png in ("latency_cpu_b1.png", "latency_cpu_b32.png", "accuracy.png", "sizes.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in text


def test_every_number_comes_from_results() -> None:
    r = synthetic()
    text_a = markdown(r, [])
    r2 = copy.deepcopy(r)
    r2["machine"]["threads"] = 7
    for row in r2["latency"]:
        row["median_ms"] *= 1.5
    assert markdown(r2, []) != text_a and "7 threads" in markdown(r2, [])


def test_sparse_goals_follow_the_numbers() -> None:
    r = synthetic()
    goals = {(g["model"], g["batch"]): g for g in sparse_goals(r)}
    assert len(goals) == 12
    # synthetic sparse time = dense · (1 − 0.7·s): at 90 % that is 1/0.37 = 2.70×
    g = goals[("one_shot_90", 32)]
    assert g["goal"] == 3.2 and not g["met"] and abs(g["speedup"] - 1 / 0.37) < 1e-9
    assert goals[("one_shot_90", 1)]["met"] and goals[("one_shot_50", 1)]["met"]
    for row in r["latency"]:
        if row["engine"] == "sparse" and row["model"] == "one_shot_50" and row["batch"] == 1:
            row["median_ms"] = 2.5 + 0.2   # slower than dense (2.5 ms, IQR 0.1) beyond the noise
    assert not {(g["model"], g["batch"]): g for g in sparse_goals(r)}[("one_shot_50", 1)]["met"]
    assert "The sparse engine against its goals" in markdown(r, [])


def test_reproduce_command_names_what_differs_from_the_defaults() -> None:
    assert reproduce_command({"batches": [1, 32], "threads": 2}) == "bash run_bench.sh"
    assert reproduce_command({"batches": [1, 32], "finetune_epochs": 1, "threads": 4}) == \
        "bash run_bench.sh --threads 4 --finetune-epochs 1"
    assert reproduce_command({"batches": [8]}).endswith("--batches 8")


def test_speedups_within_the_runs_noise_do_not_count() -> None:
    r = synthetic()
    assert all(1.0 <= v < 1.01 for v in noise_floor(r).values()), "iterative ≈ one-shot sparsity: no noise"
    for row in r["latency"]:
        if row["model"] == "iterative_50" and row["engine"] == "onnxruntime" and row["batch"] == 32:
            row["median_ms"] *= 1.5          # a slow spell: same work as one_shot_50, 1.5× the time
        if row["model"] == "one_shot_75" and row["engine"] == "onnxruntime" and row["batch"] == 32:
            row["median_ms"] /= 1.3          # a dense "speedup" from noise alone
    assert abs(noise_floor(r)[("cpu", 32)] - 1.5) < 1e-9
    verdict = verdicts(r)["speeds up the model significantly"]
    assert verdict.startswith("holds only for the cnnprune sparse engine")
    # synthetic sparse at 90 %: 1/0.37 = 2.7× (counts); at 50 %: 1/0.65 = 1.54× at batch 32 (counts, > 1.5)
    assert "one_shot_90 (batch 32)" in verdict and "one_shot_75 (batch 32)" in verdict


def _bench_entry(model: str, engine: str, p: int, data_ms: list[float]) -> dict:
    data = [d / 1e3 for d in data_ms]
    return {"name": f"{model}-{engine}-p{p}",
            "extra_info": {"model": model, "engine": engine, "batch": 1, "device": "cpu", "pass": p,
                           **({"sparse_engine_used": "sparse"} if engine == "sparse" else {})},
            "stats": {"data": data, "median": sorted(data)[len(data) // 2], "iqr": 0.0, "mean": sum(data) / len(data),
                      "min": min(data), "max": max(data), "rounds": len(data)}}


def test_passes_merge_and_speedups_are_per_pass_ratios() -> None:
    from cnnprune.report import latency_rows, paired_ratio

    # the machine halves its speed between passes; within a pass sparse is always 2x faster
    bench = {"benchmarks": [_bench_entry("one_shot_90", e, p, [ms * (1 + p)] * 3)
                            for p in range(3) for e, ms in (("onnxruntime", 4.0), ("sparse", 2.0))]}
    rows = {r["engine"]: r for r in latency_rows(bench)}
    assert set(rows) == {"onnxruntime", "sparse"}
    assert rows["sparse"]["rounds"] == 9 and rows["sparse"]["passes"] == 3
    assert rows["sparse"]["pass_medians_ms"] == pytest.approx([2.0, 4.0, 6.0])
    assert rows["sparse"]["median_ms"] == pytest.approx(4.0) and rows["sparse"]["min_ms"] == pytest.approx(2.0)
    assert paired_ratio(rows["onnxruntime"], rows["sparse"]) == pytest.approx((2.0, 2.0, 2.0))
    # pooled medians would give 8/4 = 2 here too, but not when passes are unbalanced:
    rows["sparse"]["pass_medians_ms"] = [2.0, 8.0, 6.0]
    assert paired_ratio(rows["onnxruntime"], rows["sparse"]) == pytest.approx((2.0, 1.0, 2.0))


def test_goals_with_passes_use_the_range_over_passes() -> None:
    r = synthetic()
    for row in r["latency"]:
        row["passes"] = 3
        row["pass_medians_ms"] = [row["median_ms"]] * 3
        if row["engine"] == "sparse" and row["model"] == "one_shot_50" and row["batch"] == 1:
            # slower than onnxruntime in one pass of three: not shown slower
            row["pass_medians_ms"] = [2.0, 2.6, 3.0]
        if row["engine"] == "sparse" and row["model"] == "iterative_50" and row["batch"] == 1:
            row["pass_medians_ms"] = [2.6, 2.7, 2.8]  # slower in every pass
    goals = {(g["model"], g["batch"]): g for g in sparse_goals(r)}
    assert goals[("one_shot_50", 1)]["met"] and goals[("one_shot_50", 1)]["within_noise"]
    assert not goals[("iterative_50", 1)]["met"] and not goals[("iterative_50", 1)]["within_noise"]
    assert goals[("one_shot_90", 32)]["speedup_range"] == pytest.approx([1 / 0.37] * 2)
    assert "range over passes" in markdown(r, [])


def _cuda_bench() -> dict:
    """A CUDA run in pytest-benchmark's JSON: dense eager/graph, CSR 4× slower than the graph, and
    the fp16 2:4 comparison where 2:4 is 1.25× faster than its dense GEMM."""
    entries = []
    for p in range(2):
        for model, engine, ms in (("unpruned", "torch", 2.0), ("unpruned", "cuda-graph", 1.0),
                                  ("unpruned", "torch-csr", 5.0), ("one_shot_90", "torch", 2.0),
                                  ("one_shot_90", "cuda-graph", 1.0), ("one_shot_90", "torch-csr", 4.0),
                                  ("semi_2_4", "fp16-cudnn", 0.9), ("semi_2_4", "fp16-gemm", 1.0),
                                  ("semi_2_4", "fp16-2:4", 0.8)):
            e = _bench_entry(model, engine, p, [ms] * 3)
            e["extra_info"].update(device="cuda", batch=256, sparsity=0.9 if model == "one_shot_90" else 0.0,
                                   graph=True if model == "semi_2_4" else None, layers_2_4=19)
            entries.append(e)
    return {"benchmarks": entries, "datetime": "2026-11-26T05:56:12", "version": "5.2.3", "path": "cuda_bench.json",
            "machine_info": {"cnnprune": {"gpu": "Test GPU", "torch": "2.11", "commit": "abc", "command": "pytest bench",
                                          "cuda_info": {"capability": "9.0", "cudnn_benchmark": True}}}}


def test_cuda_section_and_findings_follow_the_numbers(tmp_path: Path) -> None:
    from cnnprune.report import cuda_speedups, cuda_summary

    r = synthetic()
    assert "## CUDA" not in markdown(r, []), "no CUDA run, no section"
    r["cuda"] = cuda_summary(_cuda_bench())
    r["semi_2_4"] = {"checkpoint": "x", "accuracy": 0.91, "sparsity": 0.4998, "params_nonzero": 5_600_000,
                     "params_total": 11_173_962, "flop_limit_speedup": 1.99,
                     "vs_unpruned": {"only_baseline_correct": 30, "only_other_correct": 10, "p_value": 0.002}}
    rows = {(x["model"], x["engine"]): x for x in cuda_speedups(r)}
    assert rows[("one_shot_90", "torch-csr")]["best_dense_engine"] == "cuda-graph"
    assert rows[("one_shot_90", "torch-csr")]["speedup_vs_best_dense"] == pytest.approx(0.25)
    assert rows[("semi_2_4", "fp16-2:4")]["best_dense_engine"] == "fp16-cudnn"
    assert rows[("semi_2_4", "fp16-2:4")]["speedup_vs_best_dense"] == pytest.approx(0.9 / 0.8)
    assert rows[("semi_2_4", "fp16-2:4")]["speedup_vs_dense_gemm"] == pytest.approx(1.25)
    text = markdown(r, [])
    section = text[text.index("## CUDA: a separate run on Test GPU"):text.index("## Accuracy and agreement")]
    assert "0.25× (0.25–0.25)" in section and "| 256 | 0.900 (0.000) | 1.000 (0.000) | 0.800 (0.000) | 1.25× | 1.12× |" \
        in section
    assert "top-1 91.00%" in section and "McNemar p = 0.002" in section and "commit `abc`" in section
    speed = claims(r)[0]["measured"]
    assert any("torch.sparse CSR (cuSPARSE) on the report's unstructured masks runs at 0.25–0.25×" in line
               for line in speed)
    assert any("2:4 semi-structured sparsity (beyond the report, fp16) runs at 1.12–1.12×" in line for line in speed)
    write_report(r, tmp_path)
    assert (tmp_path / "latency_cuda.png").stat().st_size > 1000
    assert "![latency_cuda.png](latency_cuda.png)" in (tmp_path / "REPORT.md").read_text()


def test_a_dense_speedup_must_hold_in_every_pass() -> None:
    r = synthetic()
    for row in r["latency"]:
        row["passes"] = 3
        row["pass_medians_ms"] = [row["median_ms"]] * 3
        if row["engine"] == "torch" and row["batch"] == 32:
            if row["model"] == "unpruned":  # the machine slowed down while the unpruned model ran
                row["pass_medians_ms"] = [row["median_ms"], row["median_ms"] * 1.45, row["median_ms"] * 1.45]
                row["median_ms"] *= 1.45
    claim = claims(r)[0]
    assert claim["verdict"] != "holds", "1.45× in two passes of three is not a dense speedup"
    assert any("lowest pass 1.00×" in line and "not above" in line for line in claim["measured"])


def test_layer_modes_per_pass_and_pruning_alone_are_shown() -> None:
    from cnnprune.report import _layer_marks, latency_rows

    entries = [_bench_entry("one_shot_90", "sparse", p, [2.0] * 3) for p in range(3)]
    for p, (w, d) in enumerate(((10, 0), (9, 1), (10, 0))):
        entries[p]["extra_info"].update(winograd_layers=w, dense_layers=d)
    row = latency_rows({"benchmarks": entries})[0]
    assert row["winograd_layers"] == [10, 9, 10] and row["dense_layers"] == [0, 1, 0]
    assert _layer_marks(row) == " W9–10 ‡0–1"
    assert _layer_marks({"winograd_layers": [0, 0], "dense_layers": 2}) == " ‡2" and _layer_marks({}) == ""

    r = synthetic()
    for row in r["latency"]:  # the engine runs the unpruned model 2x faster than onnxruntime (Winograd)
        if row["engine"] == "sparse" and row["model"] == "unpruned":
            row["median_ms"] /= 2
    goals = {(g["model"], g["batch"]): g for g in sparse_goals(r)}
    g = goals[("one_shot_90", 32)]
    assert g["pruning_alone"] == pytest.approx((41.0 / 2) / (41.0 * (1 - 0.7 * 0.9)))
    assert g["pruning_alone"] < g["speedup"], "what Winograd gains is not counted as pruning's"
    text = markdown(r, [])
    assert "sparse: unpruned / pruned" in text and "Pruning alone" in text
    assert f"{g['pruning_alone']:.2f}×" in text


def test_resources_verdict_says_which_sparse_forms_hold_fewer_weight_bytes() -> None:
    r = synthetic()
    for m in MODELS[1:]:
        r["models"][m]["memory"]["sparse"]["32"]["weights_in_memory"] = 80e6 if m.endswith("50") else 20e6
    verdict = verdicts(r)["less resource usage"]
    assert "fewer weight bytes than dense only for one_shot_75, one_shot_90, iterative_75, iterative_90" in verdict
    assert "0.45–1.79× of dense" in verdict


def test_a_sparse_speedup_must_also_beat_the_engine_on_the_unpruned_model() -> None:
    r = synthetic()
    assert verdicts(r)["speeds up the model significantly"].startswith("holds only for the cnnprune sparse engine")
    for row in r["latency"]:  # the engine runs the unpruned model as fast as the pruned ones (a dense trick)
        if row["engine"] == "sparse" and row["model"] == "unpruned":
            row["median_ms"] = {1: 2.5, 32: 41.0}[row["batch"]] * 0.37
    assert verdicts(r)["speeds up the model significantly"] == "does not hold"
