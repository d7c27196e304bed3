"""The memory step's child: one fresh process that serves one form with the least it needs.

``python -m cnnprune.memprobe --form F --artifacts A --name N --batch B --runs R --threads T``
prints one JSON line: RSS before loading (after importing the form's engine), after loading,
the peak (VmHWM) after ``runs`` inferences, the weight bytes the loaded form holds, and which
of torch and onnxruntime the process ended up importing. The forms, each in its smallest
process (this module imports neither torch nor onnxruntime itself):

- ``dense``: PyTorch eager on ``NAME.pth`` (torch only);
- ``onnx``: onnxruntime on ``NAME.onnx`` (numpy and onnxruntime only);
- ``sparse``: :mod:`cnnprune.runtime` (numpy and the native kernels) on ``NAME.csr.safetensors``
  for the report's network, on ``NAME.graph.safetensors`` for any other whose every op runs
  natively (the export writes that file only then); else :func:`cnnprune.sparse.load` (torch,
  the kernels and its dense fallbacks).

A user who serves a pruned model pays for one of these processes, not for one that imports
every engine, so this is what "less resource usage" is judged on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

FORMS = ("dense", "onnx", "sparse")
RUNTIME, HOSTED = "cnnprune.runtime", "cnnprune.sparse (torch)"  # what served the sparse form
ENGINES = {"dense": "torch", "onnx": "onnxruntime", "sparse": RUNTIME}


def rss() -> int:
    """Resident set of this process now (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set (bytes) of this process image. ``ru_maxrss`` would not do: Linux keeps it
    across exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def input_size(artifacts: Path) -> int:
    """The model's input size as the artifacts' manifest records it (32: the report's network)."""
    path = artifacts / "manifest.json"
    record = json.loads(path.read_text()).get("model") if path.is_file() else None
    return int(record.get("input_size", 32)) if isinstance(record, dict) else 32


def _dense(artifacts: Path, name: str, threads: int) -> tuple[Callable[[np.ndarray], object], int]:
    import torch

    from cnnprune.model import load_model, spec_of_folder

    torch.set_num_threads(threads)
    model = load_model(artifacts / f"{name}.pth", spec_of_folder(artifacts).arch)
    held = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))

    def run(x: np.ndarray) -> object:
        with torch.no_grad():
            return model(torch.from_numpy(x))
    return run, held


def _onnx(artifacts: Path, name: str, threads: int) -> tuple[Callable[[np.ndarray], object], int | None]:
    from cnnprune.sessions import ort_session

    session = ort_session(artifacts / f"{name}.onnx", threads)
    return (lambda x: session.run(None, {"input": x})), None  # the parent counts the initializers


def _is_default(artifacts: Path) -> bool:
    """The report's network at 32×32: what the torch-free runtime runs."""
    path = artifacts / "manifest.json"
    record = json.loads(path.read_text()).get("model") if path.is_file() else None
    return not isinstance(record, dict) or (record.get("arch", "resnet18-cifar") == "resnet18-cifar"
                                             and int(record.get("input_size", 32)) == 32)


def sparse_file(artifacts: Path, name: str) -> Path | None:
    """The file the torch-free runtime serves this model from, or None where it cannot."""
    from cnnprune.graphfile import SUFFIX

    if _is_default(artifacts):
        return artifacts / f"{name}.csr.safetensors"
    plan = artifacts / f"{name}{SUFFIX}"
    return plan if plan.is_file() else None


def _sparse(artifacts: Path, name: str, threads: int) -> tuple[Callable[[np.ndarray], object], Callable[[], int]]:
    path = sparse_file(artifacts, name)
    if path is None:  # some op runs in PyTorch: the graph-planned engine, hosted in torch
        import torch

        from cnnprune import sparse

        torch.set_num_threads(threads)
        hosted = sparse.load(artifacts / f"{name}.csr.pt", threads=threads, plan_cache=False)
        return (lambda x: hosted(torch.from_numpy(x))), hosted.held_weight_bytes
    from cnnprune import runtime

    model = runtime.load(path, threads=threads)
    return model, model.held_weight_bytes


def probe(form: str, artifacts: Path, name: str, batch: int, runs: int, threads: int) -> dict:
    import importlib

    importlib.import_module({"dense": "torch", "onnx": "onnxruntime", "sparse": "cnnprune.runtime"}[form])
    base = rss()
    run, held = {"dense": _dense, "onnx": _onnx, "sparse": _sparse}[form](artifacts, name, threads)
    loaded = rss()
    x = np.random.default_rng(0).standard_normal((batch, 3, input_size(artifacts), input_size(artifacts)),
                                                 dtype=np.float32)
    for _ in range(runs):
        run(x)
    peak = peak_rss()
    return {"rss_before_load": base, "rss_after_load": loaded, "peak_rss": peak,
            "weights_in_memory": held() if callable(held) else held,
            "process": ENGINES[form] if form != "sparse" or sparse_file(artifacts, name) else HOSTED,
            "imported": sorted(m for m in ("torch", "onnxruntime") if m in sys.modules)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cnnprune.memprobe", description=__doc__.split("\n\n")[0])
    p.add_argument("--form", choices=FORMS, required=True)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--name", required=True)
    for flag in ("--batch", "--runs", "--threads"):
        p.add_argument(flag, type=int, required=True)
    args = p.parse_args(argv)
    from cnnprune.errors import CnnpruneError

    try:
        print(json.dumps(probe(args.form, args.artifacts, args.name, args.batch, args.runs, args.threads)))
    except CnnpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
