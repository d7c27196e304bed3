"""A small synthetic results.json (and pytest-benchmark JSON) that the report's tests edit."""

from __future__ import annotations

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
            "vs_unpruned": None if m == "unpruned" else
            {"only_baseline_correct": 3, "only_other_correct": 2, "p_value": 1.0},
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


def sparse_program_in_one_pass(results: dict) -> dict:
    """``results`` as three passes in which the sparse engine ran onnxruntime, then (at 0.8x the
    best dense engine) its sparse program, then onnxruntime again for one_shot_50 at batch 1."""
    for row in results["latency"]:
        row["passes"], row["pass_medians_ms"] = 3, [row["median_ms"]] * 3
        if row["engine"] == "sparse" and (row["model"], row["batch"]) == ("one_shot_50", 1):
            row["pass_medians_ms"] = [2.5, 3.125, 2.5]
            row["sparse_engine_used"], row["sparse_engine_passes"] = "onnxruntime+sparse", ["onnxruntime", "sparse", "onnxruntime"]
    return results


def bench_entry(model: str, engine: str, p: int, data_ms: list[float]) -> dict:
    data = [d / 1e3 for d in data_ms]
    return {"name": f"{model}-{engine}-p{p}",
            "extra_info": {"model": model, "engine": engine, "batch": 1, "device": "cpu", "pass": p,
                           **({"sparse_engine_used": "sparse"} if engine == "sparse" else {})},
            "stats": {"data": data, "median": sorted(data)[len(data) // 2], "iqr": 0.0, "mean": sum(data) / len(data),
                      "min": min(data), "max": max(data), "rounds": len(data)}}


def cuda_bench() -> dict:
    """A CUDA run in pytest-benchmark's JSON: dense eager/graph, CSR 4× slower than the graph, and
    the fp16 2:4 comparison where 2:4 is 1.25× faster than its dense GEMM."""
    entries = []
    for p in range(2):
        for model, engine, ms in (("unpruned", "torch", 2.0), ("unpruned", "cuda-graph", 1.0),
                                  ("unpruned", "torch-csr", 5.0), ("one_shot_90", "torch", 2.0),
                                  ("one_shot_90", "cuda-graph", 1.0), ("one_shot_90", "torch-csr", 4.0),
                                  ("semi_2_4", "fp16-cudnn", 0.9), ("semi_2_4", "fp16-gemm", 1.0),
                                  ("semi_2_4", "fp16-2:4", 0.8)):
            e = bench_entry(model, engine, p, [ms] * 3)
            e["extra_info"].update(device="cuda", batch=256, sparsity=0.9 if model == "one_shot_90" else 0.0,
                                   graph=True if model == "semi_2_4" else None, layers_2_4=19)
            entries.append(e)
    return {"benchmarks": entries, "datetime": "2026-11-26T05:56:12", "version": "5.2.3", "path": "cuda_bench.json",
            "machine_info": {"cnnprune": {"gpu": "Test GPU", "torch": "2.11", "commit": "abc", "command": "pytest bench",
                                          "cuda_info": {"capability": "9.0", "cudnn_benchmark": True}}}}
