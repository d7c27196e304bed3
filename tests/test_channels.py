"""Dead channels taken out of a traced plan (cnnprune.channels): constants folded into a 1x1
reader's bias (ReLU6 constants inside, at and above the clamp, and below zero), unread channels
dropped up a depthwise chain, values read by a residual, a pooling or the output kept whole,
and logits equal to eager PyTorch's on the native engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnprune.channels import remove_dead_channels
from cnnprune.fold import Csr
from cnnprune.graph import trace
from cnnprune.native import NativeSparseResNet


class Inverted(nn.Module):
    """Two MobileNetV2 inverted residual blocks (expansion 1x1 + ReLU6, depthwise 3x3 + ReLU6,
    projection 1x1; the second with a residual add), a 3x3 head and the classifier."""

    def __init__(self, width: int = 8, expanded: int = 24) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(nn.ModuleDict({
                "expand": nn.Sequential(nn.Conv2d(width, expanded, 1), nn.BatchNorm2d(expanded), nn.ReLU6()),
                "dw": nn.Sequential(nn.Conv2d(expanded, expanded, 3, padding=1, groups=expanded),
                                    nn.BatchNorm2d(expanded), nn.ReLU6()),
                "project": nn.Sequential(nn.Conv2d(expanded, width, 1), nn.BatchNorm2d(width))}))
        self.head = nn.Conv2d(width, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        for i, b in enumerate(self.blocks):
            z = b["project"](b["dw"](b["expand"](y)))
            y = z if i == 0 else y + z
        return self.fc(torch.relu(self.head(y)).mean((2, 3)))


def inverted(dead: list[int], biases: list[float], seed: int = 0) -> Inverted:
    """The network with depthwise channels ``dead`` of both blocks zeroed; their folded biases
    (BatchNorm beta; mean 0, var 1, gamma 1) set to ``biases``, so their constants are
    ReLU6(bias)."""
    torch.manual_seed(seed)
    model = Inverted().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_var.data.uniform_(0.5, 2.0)
    for b in model.blocks:
        conv, bn = b["dw"][0], b["dw"][1]
        conv.weight.data[dead] = 0
        conv.bias.data[dead] = 0
        bn.running_mean.data[dead], bn.running_var.data[dead], bn.weight.data[dead] = 0.0, 1.0 - 1e-5, 1.0
        bn.bias.data[dead] = torch.tensor(biases)
    return model


def equal_logits(model: nn.Module, size: int = 10, batch: int = 3) -> NativeSparseResNet:
    engine = NativeSparseResNet(trace(model, (3, size, size)), threads=2, calibrate=False, layer_mode="sparse")
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x)
    got = engine(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max() + 1e-6
    return engine


def op(graph, name: str):
    return next(o for o in graph.ops if o.name == name)


@pytest.mark.parametrize("biases", [[0.5, 3.0, 7.5, -1.0, 6.0], [-0.5, -2.0, 0.0, -1.0, -3.0]])
def test_dead_depthwise_channels_leave_the_block_with_their_constants_in_the_projection(biases: list[float]) -> None:
    dead = [0, 5, 6, 17, 23]
    model = inverted(dead, biases)
    graph = trace(model, (3, 10, 10))
    for i in range(2):
        assert op(graph, f"blocks.{i}.expand.0").shape[0] == 24 - len(dead)
        assert op(graph, f"blocks.{i}.dw.0").shape[0] == 24 - len(dead)
        assert op(graph, f"blocks.{i}.dw.0").in_shape[0] == 24 - len(dead)
        project = op(graph, f"blocks.{i}.project.0")
        assert project.conv.shape == (8, 24 - len(dead), 1, 1) and project.in_shape[0] == 24 - len(dead)
    cuts = {c.op: c for c in graph.cuts}
    assert cuts["blocks.0.dw.0"].before == 24 and cuts["blocks.0.dw.0"].after == 19
    assert cuts["blocks.1.project.0"].folded == len(dead)
    assert op(graph, "stem").shape[0] == 8, "the stem's output is read by a residual add: kept whole"
    rows = {r["op"]: r for r in equal_logits(model).plan_summary(3)}
    assert rows["blocks.1.dw.0"]["channels"] == "24 -> 19" and rows["stem"]["channels"] == ""


def test_the_projection_bias_holds_the_relu6_constants() -> None:
    biases = [0.5, 3.0, 7.5, -1.0, 6.0]
    dead = [0, 5, 6, 17, 23]
    model = inverted(dead, biases)
    kept = trace(model, (3, 10, 10), dead_channels=False)
    cut = trace(model, (3, 10, 10))
    project = op(kept, "blocks.0.project.0").conv
    w = project.dense()[:, dead, 0, 0]
    want = project.bias + w @ np.clip(np.array(biases, np.float32), 0, 6)
    np.testing.assert_allclose(op(cut, "blocks.0.project.0").conv.bias, want, rtol=1e-6, atol=1e-6)


def test_a_nonzero_constant_before_a_padded_reader_stays_and_a_zero_one_goes() -> None:
    """A 3x3 padded reader of two constant channels: the zero one is taken out, the nonzero one
    stays (the zero border makes it non-constant at the edge of the map)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    model[0].weight.data[[1, 4]] = 0
    model[0].bias.data[1], model[0].bias.data[4] = 0.7, -0.3  # ReLU: constant 0.7 and 0
    graph = trace(model, (3, 8, 8))
    assert op(graph, "0").shape[0] == 5, "only the zero constant (channel 4) is taken out"
    assert [(c.before, c.after) for c in graph.cuts if c.op == "0"] == [(6, 5)]
    equal_logits(model, size=8)


def test_values_read_whole_keep_every_channel() -> None:
    """A depthwise output read by a global pool keeps its dead channels (the expansion channels
    that fed only them go); with nothing alive at all, every value still has a channel."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    model[2].weight.data[:5] = 0
    graph = trace(model, (3, 8, 8))
    assert op(graph, "2").shape[0] == 8 and op(graph, "2").in_shape[0] == 3 and op(graph, "0").shape[0] == 3
    assert [(c.op, c.before, c.after) for c in graph.cuts] == [("0", 8, 3)]
    equal_logits(model, size=8)
    silent = inverted(list(range(24)), [-1.0] * 24)
    for m in silent.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.zero_()
    graph = trace(silent, (3, 10, 10))
    assert all(o.shape[0] >= 1 for o in graph.ops if o.kind == "conv")
    assert op(graph, "blocks.0.expand.0").shape[0] == 1
    equal_logits(silent)


def test_the_pass_keeps_each_weights_form_and_only_touches_native_convolutions() -> None:
    model = inverted([1, 2, 3], [0.5, 0.5, 0.5])
    graph = trace(model, (3, 10, 10))
    assert isinstance(op(graph, "blocks.0.dw.0").conv.weight, Csr), "depthwise: block-diagonal CSR"
    assert isinstance(op(graph, "blocks.0.expand.0").conv.weight, np.ndarray)
    again = trace(model, (3, 10, 10), dead_channels=False)
    assert not again.cuts and op(again, "blocks.0.dw.0").shape[0] == 24
    assert remove_dead_channels(graph) == [], "a second pass finds nothing more"


@pytest.mark.parametrize("seed", range(4))
def test_random_dead_channels_keep_the_logits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dead = sorted(rng.choice(24, size=int(rng.integers(1, 24)), replace=False).tolist())
    model = inverted(dead, rng.uniform(-2, 8, len(dead)).tolist(), seed)
    for m in model.modules():  # and unstructured zeros elsewhere, whole columns among them
        if isinstance(m, nn.Conv2d) and m.groups == 1:
            m.weight.data[torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(seed)) < 0.6] = 0
    equal_logits(model, batch=2)


@pytest.mark.parametrize("arch, amount", [("densenet121", 0.97), ("regnet_y_400mf", 0.9), ("mobilenet_v3_large", 0.9)])
def test_torchvision_networks_with_dead_channels_keep_their_logits(arch: str, amount: float) -> None:
    """Global L1 pruning of torchvision's initialisation leaves dead channels in front of a
    concatenation (DenseNet), squeeze-and-excitation gates and grouped convolutions (RegNetY) and
    hardswish blocks (MobileNetV3); the plan drops some and computes the same logits."""
    from torch.nn.utils import prune

    from cnnprune.archs import build

    torch.manual_seed(0)
    model = build(arch, 10).eval()
    convs = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]
    prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in convs:
        prune.remove(m, name)
    for m in model.modules():  # statistics that are not the identity, so that folding is tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.2, 0.2)
    engine = equal_logits(model, size=32, batch=2)
    assert engine.engine.graph.cuts, "pruning this hard leaves channels to cut"
