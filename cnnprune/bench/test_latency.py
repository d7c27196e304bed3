"""Inference latency: {unpruned + six} × {torch, onnxruntime, sparse, torch-csr, cuda-graph} ×
batch × device × pass; on a GPU also the 2:4 semi-structured model in fp16 (cuDNN dense,
im2col dense GEMM, im2col 2:4 GEMM).

Every case times one forward pass on a fixed random input after warm-up rounds, with the same
thread count for every engine. CUDA cases synchronise inside the timed call. Each pass loads
every engine afresh (the sparse engine calibrates again), so passes sample load-time choices as
well as the machine's drift. ``extra_info`` carries what the report needs to put the time in
context, and how long the untimed first call took (the sparse engine's calibration, without
the plan cache; a session's or a graph's first-run setup).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest
import torch

from cnnprune import sparse
from cnnprune.archs import ModelSpec
from cnnprune.errors import CnnpruneError
from cnnprune.measure import counts
from cnnprune.model import load_state_dict


def _load(engine: str, device: str, artifacts: Path, name: str, threads: int, spec: ModelSpec):
    why = sparse.unsupported(spec, "native" if engine == "sparse" else engine) if engine in ("sparse", "torch-csr") else None
    if why:
        pytest.skip(why)
    if engine == "torch":
        from cnnprune.model import load_model

        model = load_model(artifacts / f"{name}.pth", spec.arch).to(device)
        return model, artifacts / f"{name}.pth"
    if engine == "onnxruntime":
        if device != "cpu":
            pytest.skip("the onnxruntime package installed here has no CUDA provider")
        from cnnprune.export import ort_session

        path = artifacts / f"{name}.onnx"
        session = ort_session(path, threads)
        return (lambda x: session.run(None, {"input": x.numpy()})[0]), path
    if engine == "sparse":
        if device != "cpu":
            pytest.skip("the native sparse engine is CPU-only; torch-csr covers CUDA")
        return sparse.load(artifacts / f"{name}.csr.pt", threads=threads, plan_cache=False), artifacts / f"{name}.csr.pt"
    if engine == "torch-csr":
        return sparse.load(artifacts / f"{name}.csr.pt", engine="torch-csr", device=device), artifacts / f"{name}.csr.pt"
    if engine == "cuda-graph":
        if device != "cuda":
            pytest.skip("CUDA graphs are CUDA-only")
        from cnnprune.model import load_model

        return load_model(artifacts / f"{name}.pth", spec.arch).to(device), artifacts / f"{name}.pth"
    if engine == "openvino":
        return _openvino(artifacts / f"{name}.onnx", threads, device), artifacts / f"{name}.onnx"
    raise pytest.UsageError(f"unknown engine {engine}")


def _openvino(onnx_path: Path, threads: int, device: str):
    if device != "cpu":
        pytest.skip("OpenVINO is timed on the CPU only")
    from cnnprune.export import openvino_session

    try:
        return openvino_session(onnx_path, threads)
    except ImportError:
        pytest.skip("OpenVINO is not installed (pip install 'cnnprune[openvino]')")


def _timed_call(model, x: torch.Tensor, device: str):
    """One forward pass as the benchmark times it; CUDA calls synchronise before returning."""
    if device == "cuda":
        def call():
            with torch.no_grad():
                model(x)
            torch.cuda.synchronize()
    else:
        def call():
            with torch.no_grad():
                model(x)
    return call


def test_latency(benchmark, artifacts: Path, threads: int, model_name: str, engine: str, batch: int,
                 device: str, bench_pass: int, model_counts: dict, model_spec: ModelSpec,
                 pytestconfig: pytest.Config) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    model, path = _load(engine, device, artifacts, model_name, threads, model_spec)
    x = model_spec.example(batch).to(device)
    if engine == "cuda-graph":
        from cnnprune.cuda import graphed

        model = graphed(model, x)  # capture (after cuDNN autotuning on a side stream): not timed
    call = _timed_call(model, x, device)
    t0 = time.perf_counter()
    call()  # first call: plans, calibrates, allocates (not in the latency; its own figure, first_call_s)
    first_call_s = time.perf_counter() - t0
    if model_name not in model_counts:
        model_counts[model_name] = counts(load_state_dict(artifacts / f"{model_name}.pth"), model_spec)
    c = model_counts[model_name]
    rounds = pytestconfig.getoption("--bench-rounds") or (20 if batch == 1 else 4)
    benchmark.group = f"{device} batch {batch}"
    benchmark.extra_info.update({
        "model": model_name, "engine": engine, "batch": batch, "device": device, "threads": threads, "pass": bench_pass,
        "arch": model_spec.arch, "input_size": model_spec.input_size,
        "sparsity": c["sparsity"], "params_nonzero": c["params_nonzero"], "params_total": c["params_total"],
        "dense_macs_per_image": c["dense_macs"], "nonzero_macs_per_image": c["nonzero_macs"],
        "flop_limit_speedup": c["flop_limit_speedup"], "file_bytes": path.stat().st_size, "first_call_s": first_call_s,
    })
    if engine == "sparse":
        benchmark.extra_info["sparse_engine_used"] = model.engine_for(batch)["engine"]
        modes = [v["engine"] for v in model.layer_choice(batch).values()]
        benchmark.extra_info["dense_layers"] = modes.count("dense")
        benchmark.extra_info["winograd_layers"] = modes.count("winograd")
        graph = getattr(model.engine, "graph", None)
        if graph is not None:  # planned from its traced graph: the channels it took out
            benchmark.extra_info["conv_channels"] = list(graph.channel_totals())
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=max(2, rounds // 10), iterations=1)
    del model, call
    gc.collect()  # free this engine's thread pools before the next case is timed


def test_latency_2_4(benchmark, semi_2_4: Path, fp16_engine: str, batch: int, device: str, bench_pass: int,
                     model_counts: dict, pytestconfig: pytest.Config) -> None:
    """What a GPU needs for a real speedup (beyond the report): the unpruned model pruned 2:4, in
    fp16, as dense cuDNN convolutions, as an im2col dense GEMM, and as an im2col 2:4
    semi-structured GEMM on sparse tensor cores (cuSPARSELt or CUTLASS). Each is replayed from a
    CUDA graph, so host work (launches, cuSPARSELt's per-call planning) is out of the timing and
    what is compared is GPU time; where capture fails the case runs eager (``graph`` holds why)."""
    if device != "cuda" or not torch.cuda.is_available():
        pytest.skip("2:4 semi-structured kernels need a CUDA GPU")
    from cnnprune.cuda import graphed
    from cnnprune.model import load_model

    if fp16_engine == "fp16-cudnn":
        model = load_model(semi_2_4).to(device=device, dtype=torch.float16)
        layers_2_4, backend = 0, None
    else:
        engine, backend = ("torch-gemm", None) if fp16_engine == "fp16-gemm" else \
            ("torch-2:4", "cutlass" if fp16_engine.endswith("cutlass") else "cusparselt")
        try:
            model = sparse.load(semi_2_4, engine=engine, device=device, dtype=torch.float16,
                                backend=backend or "cusparselt")
        except CnnpruneError as exc:
            pytest.skip(str(exc))
        layers_2_4 = sum(f == "2:4" for f in model.formats.values())
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device, torch.float16)
    try:
        run, graph = graphed(model, x), True
    except Exception as exc:  # noqa: BLE001 - recorded and timed eager instead
        torch.cuda.synchronize()
        run, graph = model, f"capture failed: {type(exc).__name__}: {str(exc)[:200]}"
    call = _timed_call(run, x, device)
    call()
    if "semi_2_4" not in model_counts:
        model_counts["semi_2_4"] = counts(load_state_dict(semi_2_4))
    c = model_counts["semi_2_4"]
    rounds = pytestconfig.getoption("--bench-rounds") or (20 if batch == 1 else 4)
    benchmark.group = f"{device} batch {batch} fp16 2:4"
    benchmark.extra_info.update({
        "model": "semi_2_4", "engine": fp16_engine, "batch": batch, "device": device, "pass": bench_pass,
        "dtype": "float16", "graph": graph, "sparsity": c["sparsity"], "params_nonzero": c["params_nonzero"],
        "params_total": c["params_total"], "dense_macs_per_image": c["dense_macs"],
        "nonzero_macs_per_image": c["nonzero_macs"], "flop_limit_speedup": c["flop_limit_speedup"],
        "layers_2_4": layers_2_4, "semi_structured_backend": backend,
    })
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=max(2, rounds // 10), iterations=1)
    del model, run, call
    gc.collect()
