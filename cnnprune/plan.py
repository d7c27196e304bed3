"""The native engine's plan of a traced model: its ops in execution order (:class:`GraphOp`) and
the whole (:class:`Graph`). :mod:`cnnprune.graph` makes it from a model, :mod:`cnnprune.channels`
rewrites it, :mod:`cnnprune.graph_engine` runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cnnprune.fold import FoldedConv

# the activations the kernels fuse into an op's epilogue, by name (``GraphOp.act``) and code
# (step_t.relu; ACT_* in csrc/kernels.h); how a traced node is recognised as one is
# :mod:`cnnprune.activations` (which needs torch)
ACTS = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3, "silu": 4, "sigmoid": 5, "hardsigmoid": 6}
ACT_NAMES = {code: name for name, code in ACTS.items()}
NONNEG_ACTS = ("relu", "relu6", "sigmoid", "hardsigmoid")  # output never negative (hardswish's reaches -3/8, silu's -0.28)


@dataclass(frozen=True)
class ChannelCut:
    """What :mod:`cnnprune.channels` did to one convolution: its output channels before and
    after, and how many constant input channels it folded into its bias."""

    op: str
    before: int
    after: int
    folded: int = 0


@dataclass
class GraphOp:
    """One operation of the plan, in execution order. ``inputs``: the values it reads (names of
    fx nodes); ``output``: the value it writes; ``shape``: that value's shape for batch 1
    (C, H, W for maps); ``nonneg``: every output value is ≥ 0 (after ReLU or ReLU6)."""

    kind: str
    name: str
    inputs: list[str]
    output: str
    shape: tuple[int, ...]
    conv: FoldedConv | None = None
    act: str = "none"
    residual: str | None = None
    fn: Callable[..., object] | None = None
    why: str = ""
    nonneg: bool = False
    fused: list[str] = field(default_factory=list)
    in_shape: tuple[int, ...] = ()  # a convolution's input (C, H, W)
    grouped: bool = False  # a grouped (or depthwise) convolution, its weight block-diagonal in a dense one
    border: int = 1  # zero border (pixels) of its input buffer: its padding where that is wider than 1


@dataclass
class Graph:
    """A model's plan: its ops in order, the input value and the output value."""

    ops: list[GraphOp]
    input: str
    output: str
    input_shape: tuple[int, int, int]
    cuts: list[ChannelCut] = field(default_factory=list)  # channels taken out (cnnprune.channels)

    def convs(self) -> list[FoldedConv]:
        return [op.conv for op in self.ops if op.kind == "conv"]

    def channel_totals(self) -> tuple[int, int]:
        """Output channels of the native convolutions: in the model, and left after ``cuts``."""
        after = sum(op.shape[0] for op in self.ops if op.kind == "conv")
        return after + sum(c.before - c.after for c in self.cuts), after

    @property
    def input_border(self) -> int:
        """Zero border of the packed input: the widest padding of the convs that read it."""
        return max([op.border for op in self.ops if op.kind == "conv" and self.input in op.inputs], default=1)
