"""The whole job behind ``bash run_bench.sh``: prune → export → benchmark → measure → report.

Each step writes its outputs atomically and records a fingerprint of its inputs; a step
whose outputs are present and whose inputs are unchanged (sha256) is not redone, so an
interrupted run resumes where it stopped. ``--fresh`` redoes everything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cnnprune.errors import CnnpruneError, CliParser, add_debug_flag, non_negative_int, positive_int, run_cli
from cnnprune.fileio import sha256_file, write_json

MODELS = ("unpruned", "one_shot_50", "one_shot_75", "one_shot_90", "iterative_50", "iterative_75", "iterative_90")


@dataclass(frozen=True)
class PipelineConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    checkpoint: str | None = None
    artifacts: str = "artifacts"
    reports: str = "reports"
    threads: int = 2
    batches: tuple[int, ...] = (1, 32)
    rounds: int | None = None
    eval_limit: int | None = None
    memory_runs: int = 20
    finetune_epochs: int = 0
    models: tuple[str, ...] = MODELS
    fresh: bool = False
    passes: int = 3
    cuda_bench: str | None = "auto"


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _cached(path: Path, key: str, fresh: bool) -> dict | None:
    if fresh or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if data.get("fingerprint") == key else None


def _artifact_hashes(artifacts: Path) -> dict:
    record = json.loads((artifacts / "export.json").read_text())
    return {name: {k: f["sha256"] for k, f in e["files"].items()} for name, e in record["models"].items()}


def code_hash(bench: bool = False) -> str:
    """sha256 over the code that produces the measured figures (the sparse engine and the
    measurements; with ``bench``, the benchmark files too), so that a changed kernel
    invalidates earlier timings, accuracies and memory, and a changed harness only timings."""
    root = Path(__file__).resolve().parent
    files = [root / "sparse.py", root / "kernels.py", root / "buffers.py", root / "measure.py",
             *(root / "csrc" / name for name in ("sparse_conv.c", "winograd.c", "kernels.h"))]
    if bench:
        files += [root.parent / "bench" / "conftest.py", root.parent / "bench" / "test_latency.py"]
    return _fingerprint(*[sha256_file(f) for f in files if f.is_file()])


def step_bench(config: PipelineConfig, work: Path, hashes: dict) -> dict:
    """Run ``pytest bench`` (pytest-benchmark, autosaved to .benchmarks/) and keep its JSON."""
    out = work / "bench.json"
    key = _fingerprint("bench", hashes, config.threads, config.batches, config.rounds, config.passes, config.models,
                       code_hash(bench=True))
    cached = _cached(work / "bench.meta.json", key, config.fresh)
    if cached and out.is_file():
        return {**json.loads(out.read_text()), "reused": True, "reused_seconds": cached.get("seconds")}
    t0 = time.perf_counter()
    tmp = work / ".bench.json.tmp"
    bench_dir = Path(__file__).resolve().parent.parent / "bench"
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "-q", "-p", "no:cacheprovider",
           "--benchmark-autosave", f"--benchmark-json={tmp}",
           f"--bench-artifacts={config.artifacts}", f"--bench-threads={config.threads}",
           f"--bench-batches={','.join(map(str, config.batches))}", f"--bench-models={','.join(config.models)}",
           "--bench-devices=cpu", "--bench-engines=torch,onnxruntime,sparse,torch-csr"]
    if config.rounds:
        cmd.append(f"--bench-rounds={config.rounds}")
    cmd.append(f"--bench-passes={config.passes}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.is_file():
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise CnnpruneError(f"the benchmark run failed ({' '.join(cmd[2:4])}): {tail[-400:]}")
    os.replace(tmp, out)
    write_json(work / "bench.meta.json", {"fingerprint": key, "command": " ".join(cmd),
                                          "seconds": round(time.perf_counter() - t0, 1)})
    return json.loads(out.read_text())


def _per_model_step(path: Path, key: str, config: PipelineConfig, header: Callable[[], dict],
                    measure: Callable[[str], dict]) -> dict:
    """A step measured model by model: each model's result is written as soon as it is known, so
    an interrupted step resumes with the models still missing (same fingerprint)."""
    cached = _cached(path, key, config.fresh) or {}
    if cached.get("complete"):
        return {**cached, "reused": True, "reused_seconds": cached.get("seconds")}
    t0 = time.perf_counter()
    results = {"fingerprint": key, **header(), "models": cached.get("models", {}), "complete": False}
    for name in config.models:
        if name not in results["models"]:
            results["models"][name] = measure(name)
            write_json(path, results)
    results.update(complete=True, seconds=round(time.perf_counter() - t0, 1))
    write_json(path, results)
    return results


def step_accuracy(config: PipelineConfig, work: Path, hashes: dict) -> dict:
    from cnnprune.data import load_split
    from cnnprune.measure import evaluate_forms

    key = _fingerprint("accuracy", hashes, config.dataset, config.data_dir, config.eval_limit, config.models,
                       code_hash())
    split = None

    def header() -> dict:
        nonlocal split
        split = load_split(config.dataset, "test", Path(config.data_dir) if config.data_dir else None)
        return {"dataset": split.name,
                "test_images": len(split) if not config.eval_limit else min(config.eval_limit, len(split))}

    return _per_model_step(work / "accuracy.json", key, config, header, lambda name: evaluate_forms(
        Path(config.artifacts), name, split, config.threads, limit=config.eval_limit))


def step_memory(config: PipelineConfig, work: Path, hashes: dict) -> dict:
    from cnnprune.measure import FORMS, measure_memory

    key = _fingerprint("memory", hashes, config.memory_runs, config.batches, config.models, config.threads,
                       code_hash())
    batch = max(config.batches)
    return _per_model_step(work / "memory.json", key, config, lambda: {"runs": config.memory_runs, "batch": batch},
                           lambda name: {form: {str(batch): measure_memory(form, Path(config.artifacts), name, batch,
                                                                           config.memory_runs, config.threads)}
                                         for form in FORMS})


def step_semi_2_4(config: PipelineConfig, work: Path, hashes: dict) -> dict:
    """The unpruned model pruned 2:4 (beyond the report; the model of the CUDA 2:4 comparison):
    written to ``ARTIFACTS/semi_2_4.pth``, its accuracy (dense fp32, CPU) on the test split and
    per-image correctness for the paired test against the unpruned model."""
    from cnnprune.data import load_split
    from cnnprune.evaluate import accuracy, predictions
    from cnnprune.measure import counts
    from cnnprune.model import load_model, load_state_dict
    from cnnprune.prune import write_2_4

    path = work / "semi_2_4.json"
    key = _fingerprint("semi_2_4", hashes["unpruned"], config.dataset, config.data_dir, config.eval_limit,
                       sha256_file(Path(__file__).resolve().parent / "prune.py"), code_hash())
    target = Path(config.artifacts) / "semi_2_4.pth"
    cached = _cached(path, key, config.fresh)
    if cached and target.is_file():
        return {**cached, "reused": True, "reused_seconds": cached.get("seconds")}
    t0 = time.perf_counter()
    write_2_4(Path(config.artifacts) / "unpruned.pth", target)
    split = load_split(config.dataset, "test", Path(config.data_dir) if config.data_dir else None)
    pred = predictions(load_model(target), split, 500, config.eval_limit)
    c = counts(load_state_dict(target))
    result = {"fingerprint": key, "checkpoint": str(target), "accuracy": accuracy(pred, split),
              "correct": (pred == split.labels[: len(pred)]).int().tolist(), "sparsity": c["sparsity"],
              "params_nonzero": c["params_nonzero"], "params_total": c["params_total"],
              "flop_limit_speedup": c["flop_limit_speedup"], "seconds": round(time.perf_counter() - t0, 1)}
    write_json(path, result)
    return result


def load_cuda_bench(config: PipelineConfig) -> dict | None:
    """The pytest-benchmark JSON of a CUDA run (``bash bench/cuda.sh`` on a GPU machine), which
    the report shows as a separate section with that run's own machine, date and commit.
    ``cuda_bench``: a path, "none", or "auto" (``REPORTS/cuda/cuda_bench.json`` when present)."""
    if config.cuda_bench in (None, "none"):
        return None
    path = Path(config.reports) / "cuda" / "cuda_bench.json" if config.cuda_bench == "auto" else Path(config.cuda_bench)
    if not path.is_file():
        if config.cuda_bench == "auto":
            return None
        raise CnnpruneError(f"--cuda-bench {path} does not exist; make it with `bash bench/cuda.sh` on a GPU machine")
    try:
        data = json.loads(path.read_text())
        rows = [b for b in data["benchmarks"] if b["extra_info"]["device"] == "cuda"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CnnpruneError(f"--cuda-bench {path} is not the JSON of a `pytest bench` run "
                            "(--benchmark-json)") from None
    if not rows:
        raise CnnpruneError(f"--cuda-bench {path} holds no CUDA case; run `bash bench/cuda.sh` on a GPU machine")
    return {**data, "benchmarks": rows, "path": str(path)}


def step_finetune(config: PipelineConfig, source: str) -> dict | None:
    """iterative_90 again with K epochs of masked fine-tuning after each step (beyond the report)."""
    if config.finetune_epochs <= 0:
        return None
    from cnnprune.data import load_split
    from cnnprune.evaluate import accuracy, predictions
    from cnnprune.model import load_model
    from cnnprune.prune import PruneConfig, run_pruning
    from cnnprune.schedules import schedule_by_name

    folder = Path(config.artifacts) / f"finetune_k{config.finetune_epochs}"
    t0 = time.perf_counter()
    manifest = run_pruning(PruneConfig(checkpoint=source, out=str(folder), finetune_epochs=config.finetune_epochs,
                                       data_dir=config.data_dir, dataset=config.dataset, fresh=config.fresh),
                           [schedule_by_name("iterative_90")], progress=False)
    split = load_split(config.dataset, "test", Path(config.data_dir) if config.data_dir else None)
    model = load_model(folder / "iterative_90.pth")
    acc = accuracy(predictions(model, split, 500, config.eval_limit), split)
    entry = manifest["checkpoints"]["iterative_90"]
    return {"epochs_per_step": config.finetune_epochs, "accuracy": acc, "sparsity": entry["sparsity_tensor"],
            "seconds": entry.get("seconds", time.perf_counter() - t0), "checkpoint": str(folder / "iterative_90.pth")}


def machine_info(threads: int) -> dict:
    import numpy
    import onnx
    import onnxruntime

    from cnnprune.measure import cpu_model

    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform()}


def run(config: PipelineConfig) -> Path:
    """Run every step; returns the path of the written REPORT.md."""
    from rich.console import Console

    from cnnprune.export import ExportConfig, run_export
    from cnnprune.measure import counts
    from cnnprune.model import load_state_dict, resolve_checkpoint
    from cnnprune.prune import PruneConfig, run_pruning
    from cnnprune.report import assemble_results, write_report

    console = Console(stderr=True)
    torch.set_num_threads(config.threads)
    artifacts, reports = Path(config.artifacts), Path(config.reports)
    work = reports / "_work"
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(label: str, fn):
        console.rule(f"[bold]{label}")
        t0 = time.perf_counter()
        value = fn()
        timings[label] = round(time.perf_counter() - t0, 1)
        if isinstance(value, dict) and value.get("reused"):
            before = value.get("reused_seconds")
            timings[label] = "reused" if before is None else f"{before:.0f} (reused)"
        console.print(f"{label}: {timings[label]} s")
        return value

    source = str(resolve_checkpoint(config.checkpoint))
    manifest = timed("prune", lambda: run_pruning(PruneConfig(checkpoint=source, out=str(artifacts),
                                                              fresh=config.fresh)))
    export = timed("export", lambda: run_export(ExportConfig(src=str(artifacts), out=str(artifacts), sparse=True,
                                                             fresh=config.fresh)))
    hashes = _artifact_hashes(artifacts)
    bench = timed("benchmark", lambda: step_bench(config, work, hashes))
    accuracy = timed("accuracy", lambda: step_accuracy(config, work, hashes))
    memory = timed("memory", lambda: step_memory(config, work, hashes))
    model_counts = timed("counts", lambda: {n: counts(load_state_dict(artifacts / f"{n}.pth")) for n in config.models})
    finetune = timed("finetune", lambda: step_finetune(config, source))
    semi = timed("2:4 model", lambda: step_semi_2_4(config, work, hashes))
    cuda = load_cuda_bench(config)
    results = assemble_results(
        config=asdict(config), machine=machine_info(config.threads), manifest=manifest, export=export,
        bench=bench, accuracy=accuracy, memory=memory, counts=model_counts, finetune=finetune,
        artifacts=artifacts, step_seconds=timings, semi_2_4=semi, cuda_bench=cuda)
    report = write_report(results, reports)
    console.print(summary_table(results))
    console.print(f"report written to {report}")
    return report


def summary_table(results: dict):
    """The run at a glance: accuracy, size and CPU latency per model (rich table)."""
    from rich.table import Table

    from cnnprune.report import speedups

    table = Table(title=f"cnnprune: {results['dataset']}, {results['machine']['threads']} threads, "
                        f"median latency (ms)")
    rows = [s for s in speedups(results) if s["device"] == "cpu"]
    batches = sorted({s["batch"] for s in rows})
    table.add_column("model")
    for col in ("sparsity", "top-1", "csr / dense"):
        table.add_column(col, justify="right")
    for b in batches:
        table.add_column(f"best dense b{b}", justify="right")
        table.add_column(f"sparse b{b}", justify="right")
    for name, m in results["models"].items():
        cells = [f"{m['sparsity']:.1%}", f"{m['accuracy']['dense']['accuracy']:.2%}",
                 f"{m['files'].get('csr', 0) / m['files']['dense']:.1%}"]
        for b in batches:
            r = next((s for s in rows if s["model"] == name and s["batch"] == b and s["engine"] == "sparse"), None)
            cells.append(f"{r['median_ms'] * (r['speedup_vs_best_dense'] or 0):.2f}" if r else "–")
            cells.append(f"{r['median_ms']:.2f} ({r['speedup_vs_best_dense']:.2f}×)" if r else "–")
        table.add_row(name, *cells)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m cnnprune.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "cifar10"))
    parser.add_argument("--data-dir", help="dataset folder (CIFAR-10: the cifar-10-batches-py folder)")
    parser.add_argument("--checkpoint", help="unpruned checkpoint (default: the embedded Fashion-MNIST model)")
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--threads", type=positive_int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=positive_int, help="timed rounds per benchmark case and pass")
    parser.add_argument("--passes", type=positive_int, default=3,
                        help="passes over the benchmark matrix (speedups are the median of per-pass ratios)")
    parser.add_argument("--eval-limit", type=positive_int, help="evaluate on the first N test images only (smoke runs)")
    parser.add_argument("--memory-runs", type=positive_int, default=20)
    parser.add_argument("--finetune-epochs", type=non_negative_int, default=0,
                        help="also make iterative_90 with K epochs of fine-tuning per step (≈5·K training epochs)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cuda-bench", default="auto",
                        help="pytest-benchmark JSON of a CUDA run (bash bench/cuda.sh) shown as the report's CUDA "
                             "section; 'auto' (default): REPORTS/cuda/cuda_bench.json when present; 'none'")
    parser.add_argument("--fresh", action="store_true", help="redo every step")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        raise CnnpruneError(f"--batches {args.batches!r} must be comma-separated integers such as 1,32") from None
    if any(b < 1 for b in batches):
        raise CnnpruneError(f"--batches {args.batches!r}: every batch size must be ≥ 1")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    bad = [m for m in models if m not in MODELS]
    if bad or "unpruned" not in models:
        raise CnnpruneError(f"--models must include unpruned and name only {', '.join(MODELS)}")
    if args.dataset == "cifar10" and not args.data_dir:
        raise CnnpruneError("--dataset cifar10 needs --data-dir pointing at a cifar-10-batches-py folder")
    config = PipelineConfig(args.dataset, args.data_dir, args.checkpoint, args.artifacts, args.reports,
                            args.threads, batches, args.rounds, args.eval_limit, args.memory_runs,
                            args.finetune_epochs, models, args.fresh, args.passes, args.cuda_bench)
    run(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
