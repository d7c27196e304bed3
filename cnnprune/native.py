"""The native CPU engine hosted in PyTorch: :class:`cnnprune.engine.NativeEngine` as an
``nn.Module`` on tensors, with PyTorch's dense oneDNN convolution as a third per-layer mode
and the dense engines the harness compares against (onnxruntime, PyTorch eager, OpenVINO fp32
where installed) as whole-network fallbacks (see :mod:`cnnprune.sparse`).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnprune.activations import apply_activation
from cnnprune.engine import DenseMaker, NativeEngine
from cnnprune.errors import CnnpruneError
from cnnprune.fold import FoldedResNet
from cnnprune.graph_engine import GraphEngine, from_nchw, to_nchw  # noqa: F401  (re-exported)
from cnnprune.native_plan import ConvPlan
from cnnprune.plan import ACT_NAMES, Graph
from cnnprune.plancache import PlanCache


class _Threads:
    """PyTorch's intra-op thread count set to ``threads`` for the duration, then restored."""

    def __init__(self, threads: int) -> None:
        self.threads, self.previous = threads, threads

    def __enter__(self) -> None:
        self.previous = torch.get_num_threads()
        if self.previous != self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc) -> None:
        if self.previous != self.threads:
            torch.set_num_threads(self.previous)


class DenseSource:
    """The dense model the whole-network fallbacks are made from, and its ONNX export, each made
    when first asked for. Inside ``shared()`` (one whole-network decision builds every fallback
    at once) each is made once and kept until the block ends; outside it, every engine makes its
    own and nothing is held after (an onnxruntime session does not need the model again). Built
    each for itself, ResNet-50 at 224 read and built the model three times and exported it twice:
    the README has the times."""

    def __init__(self, model_of: Callable[[], nn.Module], input_size: int,
                 onnx_of: Callable[[], Path | None] | None = None) -> None:
        self.model_of, self.input_size = model_of, input_size
        self._onnx_of = onnx_of
        self._held: dict[str, object] | None = None

    @cached_property
    def onnx_file(self) -> Path | None:
        """The model's checked ONNX export (``export.exported_onnx``), which the fallbacks run
        instead of a new export; looked for when a fallback is first made (it hashes the file:
        0.3 s for ResNet-50's, which a load whose plan is cached never needs)."""
        return self._onnx_of() if self._onnx_of is not None else None

    @contextmanager
    def shared(self) -> Iterator[None]:
        self._held = {}
        try:
            yield
        finally:
            self._held = None

    def model(self) -> nn.Module:
        return self._get("model", self.model_of)

    def onnx(self) -> bytes:
        from cnnprune.export import onnx_bytes

        return self._get("onnx", lambda: onnx_bytes(self.model(), self.input_size))

    def _get(self, key: str, make: Callable[[], object]):
        if self._held is None:
            return make()
        if key not in self._held:
            self._held[key] = make()
        return self._held[key]


def dense_engines(source: DenseSource, threads: int) -> dict[str, DenseMaker]:
    """The whole-network dense fallbacks, each on ``threads`` threads and made from ``source``
    when first timed: onnxruntime, PyTorch eager, and OpenVINO (fp32 hint) where installed, the
    engines the harness takes the best dense figure from."""
    def onnxruntime():
        from cnnprune.export import ort_session

        session = ort_session(source.onnx_file or source.onnx(), threads)
        return lambda x: session.run(None, {"input": x})[0]

    def eager():
        model = source.model().eval()

        @torch.no_grad()
        def run(x: np.ndarray) -> np.ndarray:
            with _Threads(threads):
                return model(torch.from_numpy(x)).numpy()
        return run

    def openvino():
        from cnnprune.export import openvino_session

        if source.onnx_file is not None:
            return openvino_session(source.onnx_file, threads)
        with tempfile.TemporaryDirectory() as folder:  # compiled in memory: the file goes at once
            path = Path(folder) / "dense.onnx"
            path.write_bytes(source.onnx())
            return openvino_session(path, threads)

    makers = {"onnxruntime": onnxruntime, "torch": eager, "openvino": openvino}
    return {name: makers[name] for name in fallback_names()}


def fallback_names() -> tuple[str, ...]:
    """The dense fallbacks this host has (the report states them)."""
    return ("onnxruntime", "torch") + (("openvino",) if importlib.util.find_spec("openvino") is not None else ())


def dense_conv(threads: int):
    """The oneDNN mode: one convolution in PyTorch on ``threads`` threads, layout conversion included."""
    def make(p: ConvPlan, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None, relu: int) -> Callable[[], None]:
        if p.dense_weight is None:
            p.dense_weight = torch.from_numpy(p.conv.dense())
        bias = torch.from_numpy(p.conv.bias)

        def run() -> None:
            with _Threads(threads):
                y = F.conv2d(to_nchw(src), p.dense_weight, bias, stride=p.conv.stride, padding=p.conv.padding)
                if res is not None:
                    y += to_nchw(res)
                from_nchw(apply_activation(y, ACT_NAMES[int(relu)]), dst)
        return run
    return make


class NativeSparseResNet(nn.Module):
    """The folded network executed by the C kernels (``engine``); see :mod:`cnnprune.sparse`."""

    def __init__(self, net: FoldedResNet | Graph, threads: int | None = None, calibrate: bool = True,
                 dense_fallback: nn.Module | Callable[[], nn.Module] | None = None, winograd: bool = True,
                 layer_mode: str | None = None, cache: PlanCache | None = None,
                 onnx_of: Callable[[], Path | None] | None = None, recalibrate: bool = False) -> None:
        """``dense_fallback``: the dense model, or a function that loads it (then it is held only
        while a fallback made from it is: ``sparse.load`` reads the file again); ``onnx_of``: finds
        its checked ONNX export, which the onnxruntime and OpenVINO fallbacks then run."""
        super().__init__()
        threads = threads or torch.get_num_threads()
        size = net.input_shape[1] if isinstance(net, Graph) else 32
        model_of = (lambda: dense_fallback) if isinstance(dense_fallback, nn.Module) else dense_fallback
        source = DenseSource(model_of, size, onnx_of) if model_of is not None else None
        options = dict(calibrate=calibrate, winograd=winograd, layer_mode=layer_mode, dense_conv=dense_conv(threads),
                       fallbacks=dense_engines(source, threads) if source else None,
                       sharing=source.shared if source else None, cache=cache, recalibrate=recalibrate)
        self.engine = GraphEngine(net, threads, **options) if isinstance(net, Graph) else \
            NativeEngine(net, threads, **options)
        self.threads = threads
        self.eval()

    @property
    def net(self) -> FoldedResNet:
        return self.engine.net

    def held_weight_bytes(self) -> int:
        return self.engine.held_weight_bytes()

    def engine_for(self, batch_size: int) -> dict:
        return self.engine.engine_for(batch_size)

    def layer_choice(self, batch_size: int) -> dict[str, dict]:
        return self.engine.layer_choice(batch_size)

    def plan_summary(self, batch_size: int = 1) -> list[dict]:
        """Per op: where it runs at this batch size and why (models planned from a graph)."""
        if not isinstance(self.engine, GraphEngine):
            raise CnnpruneError("plan_summary is for models planned from their graph; use layer_choice")
        return self.engine.plan_summary(batch_size)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) for input (N, 3, 32, 32). Not re-entrant: buffers are reused per batch size."""
        if x.device.type != "cpu":
            raise CnnpruneError("the native sparse engine runs on the CPU; use engine='torch-csr' on CUDA")
        return torch.from_numpy(self.engine.run(x.detach().float().contiguous().numpy()))
