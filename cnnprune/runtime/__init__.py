"""The pruned model served with numpy and the native kernels only: no torch, no onnxruntime.

    from cnnprune import runtime
    model = runtime.load("artifacts/one_shot_90.csr.safetensors", threads=2)
    logits = model(images)            # float32 (N, 3, 32, 32) -> (N, classes)
    model = runtime.load("a50/one_shot_90.graph.safetensors")   # any CNN whose ops all run natively

It runs the same plan and kernels as ``cnnprune.sparse.load`` (:class:`cnnprune.engine.NativeEngine`):
per layer and batch size the sparse direct convolution or Winograd, whichever calibration timed
faster. Two things differ, because they need torch or onnxruntime: there is no oneDNN mode
(the sparse kernel over a dense layer is the direct convolution in its place) and no
whole-network dense fallback, so a lightly pruned model is not switched to a dense engine.

Calibration results are kept on disk (:mod:`cnnprune.plancache`): the second load of a file on
the same machine, thread count and batch size plans without timing anything. The files
come from ``python -m cnnprune.export --sparse``: ``NAME.csr.safetensors``
(:mod:`cnnprune.csrfile`) for the report's ResNet18, folded here, its shapes checked against the
architecture before anything is allocated; ``NAME.graph.safetensors`` (:mod:`cnnprune.graphfile`)
for any other network whose every op runs natively: its traced plan, BatchNorm already folded
and dead channels cut, every op, shape and index checked on reading.
``python -m cnnprune.runtime MODEL`` measures latency and peak memory from a terminal.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cnnprune import csrfile, graphfile
from cnnprune.buffers import release_free_memory
from cnnprune.engine import NativeEngine
from cnnprune.errors import CnnpruneError
from cnnprune.fileio import require_file, sha256_file
from cnnprune.fold import ARCH, INPUT_SIZE, MAX_CLASSES, fold_resnet, state_shapes
from cnnprune.plancache import PlanCache


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _architecture(f: csrfile.CsrFile) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes this file must have: the CIFAR ResNet18 with the class count its
    classifier declares (the one network a ``.csr.safetensors`` file is folded for here; any
    other is served from its ``.graph.safetensors``)."""
    model = f.model
    if model and (model.get("arch") != ARCH or model.get("input_size") != INPUT_SIZE):
        raise CnnpruneError(f"{f.path} holds {model.get('arch')} at {model.get('input_size')} px; the runtime reads "
                            f"{csrfile.SUFFIX} files of {ARCH} at {INPUT_SIZE}×{INPUT_SIZE} only: serve this network "
                            f"from its {graphfile.SUFFIX} (`python -m cnnprune.export --sparse` writes it)")
    fc = f.shapes().get("fc.weight")
    if fc is None or len(fc) != 2 or not 1 <= fc[0] <= MAX_CLASSES:
        raise CnnpruneError(f"{f.path}: fc.weight is missing or declares no valid class count; it is not a {ARCH} checkpoint")
    return state_shapes(int(fc[0]))


class Runtime:
    """A loaded model: call it on a float32 (N, *input_shape) array for float32 logits (N, classes)."""

    def __init__(self, path: Path, engine: NativeEngine, classes: int) -> None:
        self.path, self.engine, self.classes = path, engine, classes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise CnnpruneError(f"input must be a numpy array, got {type(x).__name__}")
        return self.engine.run(x)

    @property
    def threads(self) -> int:
        return self.engine.threads

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.engine.input_shape)

    def layer_choice(self, batch_size: int) -> dict[str, dict]:
        """Per layer at this batch size: the mode run, density and calibration timings (ms)."""
        return self.engine.layer_choice(batch_size)

    def plan_cached(self, batch_size: int) -> bool:
        """Whether this batch size's plan would come from the on-disk cache (no timing)."""
        cache = self.engine.cache
        return cache is not None and cache.get(self.engine._setting(batch_size)) is not None

    def held_weight_bytes(self) -> int:
        return self.engine.held_weight_bytes()


def load(path: str | os.PathLike[str], threads: int | None = None, calibrate: bool = True, cache: bool = True,
         winograd: bool = True, recalibrate: bool = False) -> Runtime:
    """Load a ``.csr.safetensors`` model. ``threads``: CPU threads of the kernels (default: the
    cores this process may use); ``calibrate``: time sparse and Winograd per layer on each new
    batch size (False: every layer sparse); ``cache``: reuse and keep calibration on disk;
    ``recalibrate``: time afresh and replace the cached plan (a plan timed while the machine
    was busy is kept until then)."""
    path = Path(path)
    if not path.name.endswith((csrfile.SUFFIX, graphfile.SUFFIX)):
        raise CnnpruneError(f"{path}: the runtime reads NAME{csrfile.SUFFIX} (the report's ResNet18) and "
                            f"NAME{graphfile.SUFFIX} files; make them with `python -m cnnprune.export --sparse`")
    if threads is not None and threads < 1:
        raise CnnpruneError(f"threads must be at least 1, got {threads}")
    path = require_file(path, "model file", "make one with `python -m cnnprune.export --sparse`")
    plans = PlanCache(sha256_file(path)) if cache and calibrate else None
    options = dict(cache=plans, recalibrate=recalibrate)
    if path.name.endswith(graphfile.SUFFIX):
        return _load_graph(path, threads or default_threads(), calibrate, winograd, options)
    f = csrfile.read(path)
    expected = _architecture(f)
    f.check(expected)
    net = fold_resnet(f.lazy_state(coo=True), compact=True)
    del f  # the file's bytes: the folded CSR weights are all the engine keeps
    release_free_memory()
    engine = NativeEngine(net, threads or default_threads(), calibrate, winograd, **options)
    return Runtime(path, engine, expected["fc.weight"][0])


def _load_graph(path: Path, threads: int, calibrate: bool, winograd: bool, options: dict) -> Runtime:
    """A ``.graph.safetensors`` model on the graph engine (no oneDNN mode, no dense fallback:
    both need torch or onnxruntime)."""
    from cnnprune.graph_engine import GraphEngine

    graph, _ = graphfile.read(path)
    release_free_memory()
    engine = GraphEngine(graph, threads, calibrate=calibrate, winograd=winograd, **options)
    out = next(op.shape for op in graph.ops if op.output == graph.output)
    return Runtime(path, engine, int(np.prod(out)))
