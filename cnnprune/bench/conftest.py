"""pytest-benchmark harness options and fixtures.

``pytest bench --benchmark-autosave`` times every model × engine × batch × device, and on a GPU
also the 2:4 semi-structured comparison in fp16 (``test_latency_2_4``). The artifacts folder is
made on first use (prune + export of the embedded default model) and reused while still valid.
Options narrow the matrix (the CI smoke run uses them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cnnprune.archs import ARCHS, DEFAULT_ARCH, ModelSpec, random_classes
from cnnprune.config import default_batches
from cnnprune.model import spec_of_folder
from cnnprune.schedules import MODELS

__all__ = ["artifacts", "cudnn_autotune", "model_counts", "model_spec", "pytest_addoption", "pytest_benchmark_update_machine_info",
           "pytest_collection_finish", "pytest_collection_modifyitems", "pytest_configure", "pytest_generate_tests",
           "pytest_runtest_logstart", "semi_2_4", "threads"]

ENGINES = ("torch", "onnxruntime", "openvino", "sparse", "torch-csr", "cuda-graph")
FP16_ENGINES = ("fp16-cudnn", "fp16-gemm", "fp16-2:4", "fp16-2:4-cutlass")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("cnnprune")
    g.addoption("--bench-artifacts", default="artifacts", help="folder with the exports (made if missing)")
    g.addoption("--bench-checkpoint", default=None, help="unpruned checkpoint to prune if artifacts are missing")
    g.addoption("--bench-arch", default=None, help="network of the artifacts (default: what their manifest records, "
                                                   "else resnet18-cifar); without --bench-checkpoint a network other "
                                                   "than resnet18-cifar gets torchvision's random weights (seed 0)")
    g.addoption("--bench-threads", type=int, default=None, help="CPU threads for every engine (default: torch's)")
    g.addoption("--bench-batches", default=None, help="comma-separated batch sizes (default: 1,32 at 32×32, else 1,16)")
    g.addoption("--bench-models", default=",".join(MODELS), help="comma-separated models")
    g.addoption("--bench-engines", default=",".join(ENGINES), help="comma-separated engines")
    g.addoption("--bench-devices", default="cpu,cuda", help="comma-separated devices")
    g.addoption("--bench-rounds", type=int, default=None,
                help="timed rounds per case and pass (default 20 at batch 1, 4 above)")
    g.addoption("--bench-passes", type=int, default=3,
                help="passes over the matrix; within a pass the engines of one model and batch run back to back")
    g.addoption("--bench-progress", default=None, metavar="FILE",
                help="append 'i/n case' to FILE as each case starts (the pipeline shows it as progress)")


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_CASES] = len(session.items)
    session.config.stash[_STARTED] = 0


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    """One line per case as it starts, for a reader outside this process (pytest's own output is
    captured there)."""
    config = _CONFIG[0] if _CONFIG else None
    path = config.getoption("--bench-progress") if config else None
    if not path:
        return
    config.stash[_STARTED] += 1
    with open(path, "a") as f:
        f.write(f"{config.stash[_STARTED]}/{config.stash[_CASES]} {nodeid.split('::')[-1]}\n")


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG[:] = [config]


_CASES = pytest.StashKey[int]()
_STARTED = pytest.StashKey[int]()
_CONFIG: list[pytest.Config] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    opt = metafunc.config.getoption
    if "model_name" in metafunc.fixturenames:
        metafunc.parametrize("model_name", _csv(opt("--bench-models")))
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", _csv(opt("--bench-engines")))
    if "batch" in metafunc.fixturenames:
        batches = [int(b) for b in _csv(opt("--bench-batches"))] if opt("--bench-batches") else \
            list(default_batches(_spec(metafunc.config).input_size))
        metafunc.parametrize("batch", batches, ids=lambda b: f"b{b}")
    if "fp16_engine" in metafunc.fixturenames:
        metafunc.parametrize("fp16_engine", FP16_ENGINES)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _csv(opt("--bench-devices")))
    if "bench_pass" in metafunc.fixturenames:
        passes = opt("--bench-passes")
        if passes < 1:
            raise pytest.UsageError(f"--bench-passes must be at least 1, got {passes}")
        metafunc.parametrize("bench_pass", range(passes), ids=lambda p: f"p{p}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Pass by pass, and within a pass the engines of one (device, model, batch) back to back:
    the machine's speed drifts over minutes, so engines compared with each other are timed
    seconds apart, and each pass is one more sample of that comparison."""
    def key(item: pytest.Item) -> tuple:
        p = getattr(item, "callspec", None)
        if p is None or "bench_pass" not in p.params:
            return (-1,)
        q = p.params
        model, engine = q.get("model_name", "semi_2_4"), q.get("engine", q.get("fp16_engine"))
        order = ENGINES + FP16_ENGINES
        return (q["bench_pass"], q["device"], MODELS.index(model) if model in MODELS else 99, model, q["batch"],
                order.index(engine) if engine in order else 99)

    items.sort(key=key)


@pytest.fixture(scope="session", autouse=True)
def cudnn_autotune() -> None:
    """cuDNN picks the fastest convolution algorithm per shape (during the untimed first call and
    warm-up): the dense CUDA engines run as a user tuning for speed would run them."""
    torch.backends.cudnn.benchmark = True


@pytest.fixture(scope="session")
def threads(pytestconfig: pytest.Config) -> int:
    n = pytestconfig.getoption("--bench-threads") or torch.get_num_threads()
    torch.set_num_threads(n)
    return n


def _spec(config: pytest.Config) -> ModelSpec:
    """The artifacts' model as their manifest records it, checked against ``--bench-arch``."""
    folder = Path(config.getoption("--bench-artifacts"))
    arch = config.getoption("--bench-arch")
    if not (folder / "manifest.json").is_file():
        return ModelSpec(arch, random_classes(arch), ARCHS[arch].input_size) if arch and arch != DEFAULT_ARCH else ModelSpec()
    spec = spec_of_folder(folder)
    if arch and arch != spec.arch:
        raise pytest.UsageError(f"--bench-artifacts {folder} holds {spec.arch}, not {arch}: give another folder, "
                                f"or prune {arch} into it first (python -m cnnprune.prune --arch {arch} --out DIR)")
    return spec


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config) -> Path:
    """The exports, made (prune + export --sparse) if missing or stale, with the settings their
    manifest records (the network, and random weights with their seed unless ``--bench-checkpoint``
    names weights)."""
    import json

    from cnnprune.export import ExportConfig, run_export
    from cnnprune.prune import PruneConfig, run_pruning

    folder = Path(pytestconfig.getoption("--bench-artifacts"))
    checkpoint = pytestconfig.getoption("--bench-checkpoint")
    arch = pytestconfig.getoption("--bench-arch") or DEFAULT_ARCH
    manifest = folder / "manifest.json"
    record = json.loads(manifest.read_text()) if manifest.is_file() else {}
    spec = _spec(pytestconfig)
    # an explicit --bench-checkpoint wins over random weights a manifest records: the folder is re-pruned from it
    random = checkpoint is None and (record.get("weights", "").startswith("random") or (not record and arch != DEFAULT_ARCH))
    if checkpoint is None and record and not random:
        checkpoint = record.get("source")
    run_pruning(PruneConfig(checkpoint=None if random else checkpoint, arch=spec.arch, input_size=spec.input_size,
                            weights="random" if random else "checkpoint", seed=record.get("seed", 0) if random else 0,
                            num_classes=spec.num_classes if random else None, out=str(folder)), progress=False)
    run_export(ExportConfig(src=str(folder), out=str(folder), sparse=True), progress=False)
    return folder


@pytest.fixture(scope="session")
def model_spec(artifacts: Path) -> ModelSpec:
    return spec_of_folder(artifacts)


@pytest.fixture(scope="session")
def model_counts() -> dict:
    """MAC and parameter counts per model, computed once per session."""
    return {}


@pytest.fixture(scope="session")
def semi_2_4(artifacts: Path) -> Path:
    """The unpruned model pruned 2:4 (``cnnprune.prune.write_2_4``), beside the other exports."""
    from cnnprune.prune import write_2_4

    return write_2_4(artifacts / "unpruned.pth", artifacts / "semi_2_4.pth", spec_of_folder(artifacts).arch)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    import numpy
    import onnxruntime

    from cnnprune.cuda import cuda_info
    from cnnprune.measure import cpu_model

    machine_info["cnnprune"] = {
        "cuda_info": cuda_info(),
        "commit": os.environ.get("CNNPRUNE_COMMIT"),
        "command": "pytest " + " ".join(config.invocation_params.args),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": config.getoption("--bench-threads") or torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
