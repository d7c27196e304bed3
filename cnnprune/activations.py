"""The activations the native kernels fuse into a convolution's (or a Linear's) epilogue: how a
traced node is recognised as one (``activation``), and the same activation in PyTorch for the
layers that run there (``apply_activation``). Their names and kernel codes are
``cnnprune.plan.ACTS`` (torch-free, for the runtime).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn


def activation(node: fx.Node, modules: dict) -> str | None:
    """The name of the activation ``node`` is (module, function or method; a key of ``ACTS``),
    else None."""
    if node.op == "call_module":
        m = modules[node.target]
        if type(m) is nn.Hardtanh and (m.min_val, m.max_val) == (0.0, 6.0):
            return "relu6"
        return _ACT_MODULES.get(type(m))
    if node.op == "call_function" and len(node.args) == 1:
        return _ACT_FUNCTIONS.get(node.target)
    if node.op == "call_method" and node.target in ("relu", "sigmoid") and len(node.args) == 1:
        return node.target
    return None


_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu", nn.Sigmoid: "sigmoid",
                nn.Hardsigmoid: "hardsigmoid"}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish", F.silu: "silu",
                  torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid"}


def apply_activation(y: torch.Tensor, act: str) -> torch.Tensor:
    """``act`` applied in place to ``y`` as the kernels' epilogue does (PyTorch's ops)."""
    if act == "relu":
        return y.relu_()
    if act == "relu6":
        return y.clamp_(0, 6)
    if act == "hardswish":
        return F.hardswish(y, inplace=True)
    if act == "silu":
        return F.silu(y, inplace=True)
    if act == "sigmoid":
        return y.sigmoid_()
    if act == "hardsigmoid":
        return F.hardsigmoid(y, inplace=True)
    return y
