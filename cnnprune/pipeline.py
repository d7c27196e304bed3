"""The whole job behind ``bash run_bench.sh``: prune → export → benchmark → measure → report.

Each step is a :class:`~cnnprune.steps.Step` recorded in a ledger: its outputs are written
atomically, and a step whose inputs (sha256 of the files it reads, its settings, the code it
runs) and outputs are unchanged is not redone, so an interrupted run resumes where it stopped.
``--fresh`` redoes everything. Every step that takes more than a moment shows its progress.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cnnprune.config import PipelineConfig
from cnnprune.errors import CliParser, CnnpruneError, add_debug_flag, run_cli
from cnnprune.hparams import add_args, from_args
from cnnprune.kernels import SOURCES
from cnnprune.steps import Ledger, Progress, Step

# The code that produces the measured figures: a change to the engine invalidates earlier
# timings, accuracies and memory; a change to the benchmark files, only the timings.
ENGINE_CODE = ("sparse.py", "fold.py", "engine.py", "plancache.py", "native.py", "native_plan.py", "gemm.py", "kernels.py", "buffers.py",
               "layouts.py", "csrfile.py", "memprobe.py", "sessions.py", "runtime/__init__.py",
               "graph.py", "graph_engine.py", "plan.py", "channels.py", "activations.py",
               "measure.py", *(f"csrc/{name}" for name in SOURCES))
BENCH_CODE = ENGINE_CODE + ("bench/conftest.py", "bench/test_latency.py")


@dataclass(frozen=True)
class Outcome:
    """A step's value, and what computing it cost when every item was reused (None: it ran now)."""

    value: Any
    reused_seconds: float | None = None

    @classmethod
    def of(cls, value: Any, ledger: Ledger) -> Outcome:
        return cls(value, ledger.seconds if ledger.all_reused else None)


def _artifact_hashes(artifacts: Path) -> dict:
    record = json.loads((artifacts / "export.json").read_text())
    return {name: {k: f["sha256"] for k, f in e["files"].items()} for name, e in record["models"].items()}


def bench_command(config: PipelineConfig, out: Path, progress_file: Path) -> list[str]:
    """``pytest`` over the package's benchmark matrix, its own ini file, from any folder."""
    from cnnprune.bench import FOLDER

    cmd = [sys.executable, "-m", "pytest", str(FOLDER), "-c", str(FOLDER / "pytest.ini"), "-q",
           "-p", "no:cacheprovider", "--benchmark-autosave", f"--benchmark-json={out}",
           f"--bench-artifacts={Path(config.artifacts).resolve()}", f"--bench-threads={config.threads}",
           f"--bench-batches={','.join(map(str, config.batches))}", f"--bench-models={','.join(config.models)}",
           "--bench-devices=cpu", f"--bench-engines={','.join(cpu_engines())}",
           f"--bench-passes={config.passes}", f"--bench-progress={progress_file}"]
    return cmd + ([f"--bench-rounds={config.rounds}"] if config.rounds else [])


def cpu_engines() -> tuple[str, ...]:
    """The CPU engines of a run: OpenVINO joins the dense ones where it is installed
    (``pip install 'cnnprune[openvino]'``); the sparse ones skip networks they cannot run."""
    import importlib.util

    dense = ("torch", "onnxruntime") + (("openvino",) if importlib.util.find_spec("openvino") else ())
    return dense + ("sparse", "torch-csr")


def _follow(proc: subprocess.Popen, progress_file: Path, start: Callable[..., None]) -> None:
    """Show each case of a running benchmark as it starts (lines 'i/n name' in ``progress_file``)."""
    seen = 0
    while True:
        done = proc.poll() is not None
        lines = progress_file.read_text().splitlines() if progress_file.is_file() else []
        for line in lines[seen:]:
            count, _, name = line.partition(" ")
            start(name, int(count.split("/")[1]) if "/" in count else None)
        seen = len(lines)
        if done:
            return
        time.sleep(0.25)


def run_benchmark(config: PipelineConfig, out: Path, progress: bool = True) -> dict:
    """Run the benchmark matrix into ``out`` (pytest-benchmark JSON; autosaved to .benchmarks/ too)."""
    with tempfile.TemporaryDirectory() as tmp:
        progress_file, log = Path(tmp) / "progress", Path(tmp) / "log"
        staged = Path(tmp) / "bench.json"
        cmd = bench_command(config, staged, progress_file)
        with open(log, "w") as sink, Progress(progress).task("benchmark", None) as start:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True)
            _follow(proc, progress_file, start)
        if proc.returncode != 0 or not staged.is_file():
            tail = deque(log.read_text().strip().splitlines(), maxlen=5)
            raise CnnpruneError(f"the benchmark run failed (pytest {cmd[3]}): {' | '.join(tail)[-400:]}")
        os.replace(staged, out)
    return {"command": " ".join(cmd)}


def step_bench(config: PipelineConfig, work: Path, hashes: dict) -> Outcome:
    out = work / "bench.json"
    ledger = Ledger(work / "bench.meta.json", "runs", fresh=config.fresh)
    step = Step("bench", (hashes, config.threads, config.batches, config.rounds, config.passes, config.models),
                BENCH_CODE, (out,))
    ledger.run("bench", step, lambda: run_benchmark(config, out))
    return Outcome.of(json.loads(out.read_text()), ledger)


def _per_model(ledger: Ledger, config: PipelineConfig, label: str, step: Callable[[str], Step],
               measure: Callable[[str], dict]) -> Outcome:
    """A step measured model by model, each model's result recorded as soon as it is known."""
    with Progress().task(label, len(config.models)) as start:
        for name in config.models:
            start(name)
            ledger.run(name, step(name), lambda n=name: measure(n))
    return Outcome.of(ledger.data, ledger)


def step_accuracy(config: PipelineConfig, work: Path, hashes: dict) -> Outcome | None:
    """Accuracy of every form; None (the report says "not measured") without trained weights and
    test images made for the network (``PipelineConfig.measures_accuracy``)."""
    from cnnprune.measure import evaluate_forms

    if not config.measures_accuracy:
        return None
    split = _test_split(config)
    images = len(split) if not config.eval_limit else min(config.eval_limit, len(split))
    ledger = Ledger(work / "accuracy.json", "models", {"dataset": split.name, "test_images": images}, config.fresh)
    return _per_model(ledger, config, "accuracy", lambda name: Step(
        f"accuracy {name}", (hashes[name], config.dataset, config.data_dir, config.eval_limit), ENGINE_CODE),
        lambda name: evaluate_forms(Path(config.artifacts), name, split, config.threads, limit=config.eval_limit))


def step_memory(config: PipelineConfig, work: Path, hashes: dict) -> Outcome:
    from cnnprune.measure import forms_of, measure_memory
    from cnnprune.model import spec_of_folder

    forms = forms_of(spec_of_folder(config.artifacts))
    batch = max(config.batches)
    ledger = Ledger(work / "memory.json", "models", {"runs": config.memory_runs, "batch": batch}, config.fresh)
    return _per_model(ledger, config, "memory", lambda name: Step(
        f"memory {name}", (hashes[name], config.memory_runs, batch, config.threads), ENGINE_CODE),
        lambda name: {form: {str(batch): measure_memory(form, Path(config.artifacts), name, batch,
                                                        config.memory_runs, config.threads)} for form in forms})


def _test_split(config: PipelineConfig):
    from cnnprune.model import spec_of_folder

    return _read_test_split(config.dataset, config.data_dir, spec_of_folder(config.artifacts))


@functools.lru_cache(maxsize=2)
def _read_test_split(dataset: str, data_dir: str | None, spec):
    """The test split, read once per run however many checkpoints are evaluated on it."""
    from cnnprune.data import load_split

    return load_split(dataset, "test", Path(data_dir) if data_dir else None, size=spec.input_size,
                      num_classes=spec.num_classes)


def _dense_correct(checkpoint: Path, config: PipelineConfig) -> dict:
    """Top-1 (dense, CPU) of one checkpoint on the test split, with per-image correctness."""
    from cnnprune.evaluate import accuracy, predictions
    from cnnprune.model import load_model

    split = _test_split(config)
    pred = predictions(load_model(checkpoint, config.arch), split, 500, config.eval_limit)
    return {"accuracy": accuracy(pred, split), "correct": (pred == split.labels[: len(pred)]).int().tolist()}


def _semi_2_4(config: PipelineConfig, target: Path) -> dict:
    from cnnprune.measure import counts
    from cnnprune.model import load_state_dict, spec_of_folder
    from cnnprune.prune import write_2_4

    write_2_4(Path(config.artifacts) / "unpruned.pth", target, config.arch)
    c = counts(load_state_dict(target), spec_of_folder(config.artifacts))
    return {"checkpoint": str(target), **_dense_correct(target, config), "sparsity": c["sparsity"],
            "params_nonzero": c["params_nonzero"], "params_total": c["params_total"],
            "flop_limit_speedup": c["flop_limit_speedup"]}


def step_semi_2_4(config: PipelineConfig, work: Path, hashes: dict) -> Outcome | None:
    """The unpruned model pruned 2:4 (beyond the report; the model of the CUDA 2:4 comparison):
    ``ARTIFACTS/semi_2_4.pth``, its accuracy (dense fp32, CPU) and per-image correctness. Only
    where accuracy is measured: without it the 2:4 model says nothing the CUDA section can use."""
    if not config.measures_accuracy:
        return None
    target = Path(config.artifacts) / "semi_2_4.pth"
    ledger = Ledger(work / "semi_2_4.json", "models", fresh=config.fresh)
    step = Step("semi_2_4", (hashes["unpruned"], config.dataset, config.data_dir, config.eval_limit),
                ("prune.py",) + ENGINE_CODE, (target,))
    with Progress().task("2:4 model", 1) as start:
        start("prune 2:4 and evaluate")
        value = ledger.run("semi_2_4", step, lambda: _semi_2_4(config, target))
    return Outcome.of(value, ledger)


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


def step_recalibrated(config: PipelineConfig, work: Path, source: str) -> Outcome | None:
    """Every pruned checkpoint again with BatchNorm recalibration (beyond the report), and its accuracy."""
    if not config.recalibrate_bn:
        return None
    from cnnprune.fileio import sha256_file
    from cnnprune.prune import PruneConfig, run_pruning

    pruned = tuple(m for m in config.models if m != "unpruned")
    folder = Path(config.artifacts) / f"recalibrated_bn{config.recalibrate_bn}"
    manifest = run_pruning(PruneConfig(checkpoint=source, out=str(folder), recalibrate_bn=config.recalibrate_bn,
                                       dataset=config.dataset, data_dir=config.data_dir, only=pruned,
                                       fresh=config.fresh))
    first = manifest["checkpoints"][pruned[0]]["recalibrate_bn"] if pruned else {}
    ledger = Ledger(work / "recalibrated.json", "models", {"images": config.recalibrate_bn,
                                                           "source": first.get("source")}, config.fresh)
    with Progress().task("accuracy after recalibration", len(pruned)) as start:
        for name in pruned:
            start(name)
            path = folder / f"{name}.pth"
            step = Step(f"recalibrated {name}", (sha256_file(path), config.dataset, config.data_dir, config.eval_limit))
            ledger.run(name, step, lambda p=path, n=name: {
                **_dense_correct(p, config), "sparsity": manifest["checkpoints"][n]["sparsity_tensor"]})
    return Outcome.of(ledger.data, ledger)


def step_compare(config: PipelineConfig, work: Path) -> Outcome | None:
    """A second source model (another training recipe) measured as this run's (beyond the report)."""
    if not config.compare_checkpoint:
        return None
    from cnnprune.fileio import sha256_file
    from cnnprune.recipes import measure_source

    path = Path(config.compare_checkpoint)
    ledger = Ledger(work / "compare.json", "sources", fresh=config.fresh)
    step = Step("compare", (sha256_file(path), config.models, config.recalibrate_bn, config.dataset, config.data_dir,
                            config.eval_limit), ("prune.py", "recalibrate.py", "recipes.py"))
    with Progress().task("recipe comparison", 1) as start:
        start(path.name)
        value = ledger.run("compare", step, lambda: measure_source(
            config, path, Path(config.artifacts) / "compare", lambda p: _dense_correct(p, config)))
    return Outcome.of(value, ledger)


def step_finetune(config: PipelineConfig, source: str) -> dict | None:
    """iterative_90 again with K epochs of masked fine-tuning after each step (beyond the report)."""
    if config.finetune_epochs <= 0:
        return None
    from cnnprune.prune import PruneConfig, run_pruning
    from cnnprune.schedules import schedule_by_name

    folder = Path(config.artifacts) / f"finetune_k{config.finetune_epochs}"
    t0 = time.perf_counter()
    manifest = run_pruning(PruneConfig(checkpoint=source, out=str(folder), finetune_epochs=config.finetune_epochs,
                                       data_dir=config.data_dir, dataset=config.dataset, fresh=config.fresh),
                           [schedule_by_name("iterative_90")])
    entry = manifest["checkpoints"]["iterative_90"]
    return {"epochs_per_step": config.finetune_epochs, **_dense_correct(folder / "iterative_90.pth", config),
            "sparsity": entry["sparsity_tensor"], "seconds": entry.get("seconds", time.perf_counter() - t0),
            "checkpoint": str(folder / "iterative_90.pth")}


def machine_info(threads: int) -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    from cnnprune.measure import cpu_detail, cpu_model
    from cnnprune.native import fallback_names

    return {"cpu": cpu_model(), "cpu_detail": cpu_detail(), "logical_cpus": os.cpu_count(), "threads": threads,
            "python": platform.python_version(),
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "sparse_fallbacks": list(fallback_names()), **_openvino_version()}


def _openvino_version() -> dict:
    import importlib.metadata

    try:
        return {"openvino": importlib.metadata.version("openvino")}
    except importlib.metadata.PackageNotFoundError:
        return {}


class _Timer:
    """Runs the steps in order, each under a header, and keeps what each cost (seconds or reused)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.seconds: dict[str, float | str] = {}

    def __call__(self, label: str, fn: Callable[[], Any]) -> Any:
        self.console.rule(f"[bold]{label}")
        t0 = time.perf_counter()
        value = fn()
        self.seconds[label] = round(time.perf_counter() - t0, 1)
        if isinstance(value, Outcome):
            if value.reused_seconds is not None:
                self.seconds[label] = f"{value.reused_seconds:.0f} (reused)"
            value = value.value
        self.console.print(f"{label}: {self.seconds[label]} s")
        return value


def _counts(path: Path, spec) -> dict:
    """A model's parameter and MAC counts (``measure.counts``) and its logit spread."""
    from cnnprune.measure import counts, logit_spread
    from cnnprune.model import load_model, load_state_dict

    return counts(load_state_dict(path), spec) | logit_spread(load_model(path, spec.arch), spec)


def run(config: PipelineConfig) -> Path:
    """Run every step; returns the path of the written REPORT.md."""
    import torch

    from cnnprune.analysis import analyse
    from cnnprune.export import ExportConfig, run_export
    from cnnprune.model import resolve_checkpoint, spec_of_folder
    from cnnprune.prune import PruneConfig, run_pruning
    from cnnprune.report import write_report
    from cnnprune.results import assemble_results
    from cnnprune.summary import summary_table

    torch.set_num_threads(config.threads)
    artifacts, reports = Path(config.artifacts), Path(config.reports)
    work = reports / "_work"
    work.mkdir(parents=True, exist_ok=True)
    timed = _Timer()
    source = str(resolve_checkpoint(config.checkpoint)) if config.weights == "checkpoint" else None
    manifest = timed("prune", lambda: run_pruning(PruneConfig(
        checkpoint=source, arch=config.arch, weights=config.weights, seed=config.seed, input_size=config.input_size,
        out=str(artifacts), fresh=config.fresh)))
    spec = spec_of_folder(artifacts)
    export = timed("export", lambda: run_export(ExportConfig(src=str(artifacts), out=str(artifacts), sparse=True,
                                                             fresh=config.fresh)))
    hashes = _artifact_hashes(artifacts)
    bench = timed("benchmark", lambda: step_bench(config, work, hashes))
    accuracy = timed("accuracy", lambda: step_accuracy(config, work, hashes))
    memory = timed("memory", lambda: step_memory(config, work, hashes))
    model_counts = timed("counts", lambda: {n: _counts(artifacts / f"{n}.pth", spec) for n in config.models})
    finetune = timed("finetune", lambda: step_finetune(config, source))
    recalibrated = timed("BN recalibration", lambda: step_recalibrated(config, work, source))
    compare = timed("recipe comparison", lambda: step_compare(config, work))
    semi = timed("2:4 model", lambda: step_semi_2_4(config, work, hashes))
    results = assemble_results(
        config=asdict(config), machine=machine_info(config.threads), manifest=manifest, export=export,
        bench=bench, accuracy=accuracy, memory=memory, counts=model_counts, finetune=finetune,
        artifacts=artifacts, step_seconds=timed.seconds, semi_2_4=semi, cuda_bench=load_cuda_bench(config),
        recalibrated=recalibrated, compare=compare)
    analysis = analyse(results)
    report = write_report(results, reports, analysis)
    timed.console.print(summary_table(analysis))
    timed.console.print(f"report written to {report}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m cnnprune.pipeline", description=__doc__.splitlines()[0])
    add_args(parser, PipelineConfig)
    add_debug_flag(parser)
    run(from_args(PipelineConfig, parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
