"""The native CPU engine hosted in PyTorch: :class:`cnnprune.engine.NativeEngine` as an
``nn.Module`` on tensors, with PyTorch's dense oneDNN convolution as a third per-layer mode
and dense onnxruntime as the whole-network fallback (see :mod:`cnnprune.sparse`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnprune.engine import NativeEngine
from cnnprune.errors import CnnpruneError
from cnnprune.fold import FoldedResNet
from cnnprune.graph import Graph
from cnnprune.graph_engine import GraphEngine, from_nchw, to_nchw  # noqa: F401  (re-exported)
from cnnprune.native_plan import ConvPlan
from cnnprune.plancache import PlanCache


def ort_session_of(model: nn.Module, threads: int, input_size: int = 32):
    """In-memory onnxruntime session of the dense model, same thread count (the fallback)."""
    from cnnprune.export import onnx_bytes, ort_session

    return ort_session(onnx_bytes(model, input_size), threads)


def dense_conv(threads: int):
    """The oneDNN mode: one convolution in PyTorch on ``threads`` threads, layout conversion included."""
    def make(p: ConvPlan, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None, relu: bool) -> Callable[[], None]:
        if p.dense_weight is None:
            p.dense_weight = torch.from_numpy(p.conv.dense())
        bias = torch.from_numpy(p.conv.bias)

        def run() -> None:
            previous = torch.get_num_threads()
            if previous != threads:
                torch.set_num_threads(threads)
            try:
                y = F.conv2d(to_nchw(src), p.dense_weight, bias, stride=p.conv.stride, padding=p.conv.padding)
                if res is not None:
                    y += to_nchw(res)
                if relu == 2:
                    y.clamp_(0, 6)
                elif relu:
                    y.relu_()
                from_nchw(y, dst)
            finally:
                if previous != threads:
                    torch.set_num_threads(previous)
        return run
    return make


class NativeSparseResNet(nn.Module):
    """The folded network executed by the C kernels (``engine``); see :mod:`cnnprune.sparse`."""

    def __init__(self, net: FoldedResNet | Graph, threads: int | None = None, calibrate: bool = True,
                 dense_fallback: nn.Module | None = None, winograd: bool = True, layer_mode: str | None = None,
                 cache: PlanCache | None = None) -> None:
        super().__init__()
        threads = threads or torch.get_num_threads()
        fallback = None
        size = net.input_shape[1] if isinstance(net, Graph) else 32
        if dense_fallback is not None and calibrate:
            session = ort_session_of(dense_fallback, threads, size)
            fallback = lambda x: session.run(None, {"input": x})[0]  # noqa: E731
        options = dict(calibrate=calibrate, winograd=winograd, layer_mode=layer_mode, dense_conv=dense_conv(threads),
                       fallback=fallback, fallback_name="onnxruntime", cache=cache)
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
