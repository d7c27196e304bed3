"""The native engine planned from a traced graph (cnnprune.graph, cnnprune.graph_engine): logits
equal to eager PyTorch's for torchvision architectures and for graphs with ops the kernels do
not have, in every layer mode and batch size; BatchNorm, activations and residual adds fused
where they may be; the plan summary; loading any architecture through cnnprune.sparse."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from cnnprune import csr, sparse
from cnnprune.archs import ModelSpec, build
from cnnprune.errors import CnnpruneError
from cnnprune.graph import fold_conv, trace
from cnnprune.graph_engine import GraphEngine, overwritable_residuals
from cnnprune.kernels import library
from cnnprune.native import NativeSparseResNet, fallback_names
from cnnprune.native_plan import HOST_DENSE_DENSITY
from cnnprune.plancache import PlanCache


def pruned(model: nn.Module, amount: float, seed: int = 0) -> nn.Module:
    """Global L1 pruning of the convolutions, made permanent, with BatchNorm statistics that are
    not the identity (so that folding is tested), eval mode."""
    g = torch.Generator().manual_seed(seed)
    convs = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d)]
    prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in convs:
        prune.remove(m, name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.running_mean, -0.2, 0.2), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                              (m.bias, -0.2, 0.2)):
                t.data.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model.eval()


def check(model: nn.Module, size: int, batch: int, **options) -> NativeSparseResNet:
    engine = NativeSparseResNet(trace(model, (3, size, size)), threads=2, **options)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        want = model(x)
    got = engine(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4 * want.abs().max() + 1e-6
    assert torch.equal(got.argmax(1), want.argmax(1))
    return engine


@pytest.mark.parametrize("arch, size, amount", [("resnet50", 64, 0.9), ("resnet18", 56, 0.5),
                                                ("mobilenet_v2", 64, 0.8), ("resnet18-cifar", 32, 0.9)])
@pytest.mark.parametrize("mode", ["sparse", "winograd", "gemm", None])
def test_graph_engine_matches_eager(arch: str, size: int, amount: float, mode: str | None) -> None:
    torch.manual_seed(0)
    model = pruned(build(arch, 10), amount)
    for batch in (1, 3):
        check(model, size, batch, calibrate=mode is None, layer_mode=mode)


@pytest.mark.parametrize("arch, amount", [("resnet50", 0.9), ("mobilenet_v2", 0.8), ("resnet18", 0.5)])
def test_stride_2_at_one_or_two_vectors_per_pixel_reads_its_input_directly(arch: str, amount: float) -> None:
    torch.manual_seed(0)
    model = pruned(build(arch, 10), amount)
    for batch, mode in ((library().vector_width(), "sparse"), (library().vector_width(), None),
                        (2 * library().vector_width(), "sparse")):
        plans = check(model, 64, batch, calibrate=mode is None, layer_mode=mode).engine._plans[batch]["convs"]
        assert any(p.direct for p in plans.values()), "the stem and the stride-2 3x3 convolutions"
        assert all(p.direct == (p.conv.stride == 2 and not p.span) for p in plans.values())


def test_3x3_layers_over_the_span_match_eager_at_stride_1_and_2(monkeypatch) -> None:
    """Every 3x3 layer whose output rows the row tiles cut in pieces (ResNet-50 at 64 pixels, batch
    3: 8x8 to 2x2 maps of 3 floats a pixel) made to run over the span: stride 2 reads phase planes
    in the output's geometry, which the split writes a row and a column wider."""
    import cnnprune.engine as engine_module

    original = engine_module.fold_tiles

    def last_tiling(ms: dict, tiles: list):
        """The last tiling (the span's, where a 3x3 layer has one), in sparse mode, as fastest."""
        original(ms, tiles)
        ms["sparse"] = 0.0
        return tiles[-1]
    torch.manual_seed(0)
    model = pruned(build("resnet50", 10), 0.9)
    monkeypatch.setattr(engine_module, "fold_tiles", last_tiling)
    plans = check(model, 64, 3).engine._plans[3]["convs"].values()
    over = {p.conv.stride for p in plans if p.pieces}
    assert over == {1, 2} and all(p.pieces for p in plans if p.conv_span)


class StemReadTwice(nn.Module):
    """A 7x7 stride-2 stem with ReLU whose output a max pool reads, and a mean too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 7, stride=2, padding=3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.c = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        z = torch.relu(self.c(self.pool(y)))
        return self.fc(torch.cat([z.mean((2, 3)), y.mean((2, 3))], 1))


def step_kinds(engine: NativeSparseResNet, batch: int) -> list[int]:
    from cnnprune.profile import steps_of

    return [step.kind for step, _ in steps_of(engine.engine._program(batch)["program"])]


@pytest.mark.parametrize("batch", [1, 3, 16, 32])
def test_a_stem_and_the_max_pool_that_alone_reads_it_run_as_one_step(batch: int) -> None:
    """A 224-pixel ResNet's sparse 7x7 stride-2 stem and its max pool: one CONV_POOL step (phase
    planes) or CONV_POOL_S2 (direct, at one or two vectors a pixel); a stem output that a
    second op reads is stored and pooled apart."""
    from cnnprune import kernels as K

    torch.manual_seed(0)
    kinds = step_kinds(check(pruned(build("resnet18", 10), 0.5), 56, batch, calibrate=False, layer_mode="sparse"), batch)
    direct = K.direct_stride2(2, batch)
    assert kinds.count(K.CONV_POOL_S2 if direct else K.CONV_POOL) == 1 and K.MAXPOOL not in kinds
    kinds = step_kinds(check(pruned(StemReadTwice(), 0.5), 20, batch, calibrate=False, layer_mode="sparse"), batch)
    assert K.MAXPOOL in kinds and K.CONV_POOL not in kinds and K.CONV_POOL_S2 not in kinds


class Odd(nn.Module):
    """Ops the kernels lack between native ones: concatenation, sigmoid gating, average pooling;
    and native ones: a 5x5 padding-2 convolution beside a 3x3 one on the model's input (packed
    with a 2-pixel border, copied with 1 for the other), a 5x5 depthwise one inside the network
    (a copy of its input with a 2-pixel border), a 3x3 depthwise convolution, a grouped one, a
    residual add of two convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 5, padding=2)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.dw5 = nn.Conv2d(16, 16, 5, padding=2, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.c = nn.Conv2d(16, 16, 1)
        self.d = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = self.c(y) + self.dw(y) * torch.sigmoid(self.dw5(y)) + self.grouped(y)
        y = torch.nn.functional.relu6(self.d(y)) + self.pool(y)
        return self.fc(y.mean((2, 3)))


def test_ops_without_kernels_run_in_pytorch_between_native_ones() -> None:
    torch.manual_seed(1)
    model = pruned(Odd(), 0.5)
    engine = check(model, 12, 2, calibrate=False, layer_mode="sparse")
    rows = {r["op"]: r for r in engine.plan_summary(2)}
    assert rows["a"]["runs"] == "sparse" and rows["d"]["runs"] == "sparse"
    assert rows["b"]["runs"] == "sparse", "padding 2 on the model's input"
    assert rows["dw"]["runs"] == "sparse", "a 3x3 depthwise convolution runs natively"
    assert rows["dw5"]["runs"] == "sparse", "padding 2 inside the network"
    assert rows["grouped"]["runs"] == "sparse", "a grouped convolution runs natively (block diagonal)"
    assert rows["cat"]["runs"] == "pytorch" and "cat" in rows["cat"]["why"]
    assert "relu6" in rows["d"]["fused"], "ReLU6 fused into the convolution before it"


class Swish(nn.Module):
    """Hardswish after convolutions of every kind the kernels run (3x3, strided, depthwise, 1x1
    as a span), as a module and as a function, and a max pool after it (hardswish output can be
    negative, so that pool may not assume a zero border is a lower bound)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.act = nn.Hardswish()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c = nn.Conv2d(16, 32, 1)
        self.d = nn.Conv2d(32, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.a(x)))
        y = F.hardswish(self.c(F.hardswish(self.dw(y))))
        y = self.pool(F.hardswish(self.d(y)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.parametrize("mode", ["sparse", "gemm", "winograd", None])
def test_hardswish_is_fused_into_the_convolution_before_it(mode: str | None) -> None:
    torch.manual_seed(6)
    model = pruned(Swish(), 0.5)
    with torch.no_grad():  # activations around 0 and beyond -3 and 3, where hardswish bends
        model.a.weight.mul_(4)
    for batch in (1, 3, library().vector_width()):
        engine = check(model, 24, batch, calibrate=mode is None, layer_mode=mode)
    ops = {op.name: op for op in engine.engine.graph.ops}
    assert all(ops[name].kind == "conv" and ops[name].act == "hardswish" for name in ("a", "dw", "c", "d"))
    rows = {r["op"]: r for r in engine.plan_summary(3)}
    assert rows["a"]["runs"] != "pytorch" and "act" in rows["a"]["fused"]
    assert rows["pool"]["runs"] == "pytorch", "a max pool over negative values keeps PyTorch's padding"
    if mode == "winograd":
        modes = {p.conv.name: p.mode for p in engine.engine._plans[3]["convs"].values()}
        assert modes["d"] == "winograd", "Winograd's epilogue has hardswish too"


def test_mobilenet_v3_matches_eager() -> None:
    torch.manual_seed(0)
    model = pruned(build("mobilenet_v3_large", 10), 0.8)
    for batch in (1, 3):
        engine = check(model, 64, batch, calibrate=False, layer_mode="sparse")
    acts = {op.act for op in engine.engine.graph.ops if op.kind == "conv"}
    assert "hardswish" in acts
    linear = [op for op in engine.engine.graph.ops if op.kind == "linear"]
    assert [op.act for op in linear] == ["hardswish", "none"], "the classifier: Linear, Hardswish, Linear"
    assert not [op.name for op in engine.engine.graph.ops if op.kind == "torch"], "nothing left in PyTorch"


def test_efficientnet_runs_wholly_natively() -> None:
    """SiLU fused, stochastic depth removed so the residual add fuses, the squeeze-excitation
    gate (sigmoid fused, the scale native), the 5x5 depthwise convolutions on wider borders."""
    torch.manual_seed(0)
    model = pruned(build("efficientnet_b0", 10), 0.8)
    for batch in (1, 3):
        engine = check(model, 64, batch, calibrate=False, layer_mode="sparse")
    convs = [op for op in engine.engine.graph.ops if op.kind == "conv"]
    assert sum(op.act == "silu" for op in convs) >= 30, "SiLU fused into the convolutions before it"
    assert sum(op.residual is not None for op in convs) == 9, "stochastic depth (eval: identity) removed before the add"
    assert sum(op.kind == "scale" for op in engine.engine.graph.ops) == 16, "every squeeze-excitation gate native"
    assert sum(op.act == "sigmoid" for op in convs) == 16, "the gate's sigmoid fused into the convolution before it"
    assert {op.border for op in convs} == {1, 2}, "the 5x5 depthwise convolutions read 2-pixel borders"
    assert not [op.name for op in engine.engine.graph.ops if op.kind == "torch"], "nothing left in PyTorch"


@pytest.mark.parametrize("arch, size, amount", [("regnet_y_400mf", 64, 0.8), ("resnext50_32x4d", 32, 0.9)])
def test_grouped_networks_run_wholly_natively(arch: str, size: int, amount: float) -> None:
    """RegNetY (grouped 3x3 convolutions, squeeze-excitation with ReLU and sigmoid, a flatten
    given start_dim by keyword) and ResNeXt (grouped 3x3 convolutions): no op left in PyTorch."""
    torch.manual_seed(0)
    model = pruned(build(arch, 10), amount)
    engine = check(model, size, 2, calibrate=False, layer_mode="sparse")
    assert not [op.name for op in engine.engine.graph.ops if op.kind == "torch"]
    assert not any("stochastic_depth" in op.why or "Dropout" in op.why for op in engine.engine.graph.ops)


class Grouped(nn.Module):
    """Grouped convolutions of every kind the kernels run: 3x3 stride 1 and 2 (the direct
    stride-2 kernel at one vector per pixel), a 1x1 one (a span), with more and fewer output
    channels than input ones, a residual add and ReLU after them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.g3 = nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.g3s2 = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=8)
        self.g1 = nn.Conv2d(32, 16, 1, groups=2)
        self.g1b = nn.Conv2d(16, 32, 1, groups=16)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.g3(torch.relu(self.a(x)))))
        y = torch.relu(self.g3s2(y))
        y = torch.relu(self.g1b(torch.relu(self.g1(y))) + y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def test_block_diagonal_is_the_grouped_convolution() -> None:
    """The CSR of a grouped weight, expanded, convolves like the grouped convolution itself."""
    torch.manual_seed(3)
    conv = nn.Conv2d(12, 8, 3, padding=1, groups=4)
    with torch.no_grad():
        conv.weight[conv.weight.abs() < 0.1] = 0
    folded = fold_conv("g", conv, None)
    assert folded.shape == (8, 12, 3, 3) and folded.nnz == int((conv.weight != 0).sum())
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        want = conv(x)
    got = F.conv2d(x, torch.from_numpy(folded.dense()), torch.from_numpy(folded.bias), padding=1)
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("mode", ["sparse", "gemm", "winograd", None])
def test_grouped_convolutions_run_natively(mode: str | None) -> None:
    torch.manual_seed(7)
    model = pruned(Grouped(), 0.5)
    for batch in (1, 3, library().vector_width()):
        engine = check(model, 16, batch, calibrate=mode is None, layer_mode=mode)
    rows = {r["op"]: r for r in engine.plan_summary(3)}
    assert all(rows[name]["runs"] == "sparse" for name in ("g3", "g3s2", "g1", "g1b")), \
        "grouped layers run the sparse kernel in every mode (no dense, GEMM or Winograd form)"
    assert "bn" in rows["g3"]["fused"] and "add" in rows["g1b"]["fused"]


class Heads(nn.Module):
    """A native global pool feeding a Linear through a flatten and a dropout, and also (so that
    flatten must stay a tensor) the flattened features themselves."""

    def __init__(self, features_out: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(24, 7)
        self.features_out = features_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), (1, 1)), 1)
        y = self.fc(self.drop(flat))
        return torch.cat([y, flat], 1) if self.features_out else y


@pytest.mark.parametrize("features_out", [False, True])
def test_the_classifier_runs_natively_after_a_native_pool(features_out: bool) -> None:
    torch.manual_seed(5)
    model = Heads(features_out).eval()
    for batch in (1, 3):
        engine = check(model, 16, batch, calibrate=False, layer_mode="sparse")
    rows = {r["op"]: r for r in engine.plan_summary(3)}
    assert rows["adaptive_avg_pool2d"]["runs"] == "native", "the function form of the global pool"
    assert rows["fc"]["runs"] == ("pytorch" if features_out else "native")
    assert ("flatten" in rows) == features_out, "a flatten read by Linear layers only is the pool's flat buffer"


@pytest.mark.parametrize("amount, sparse_at", [(0.95, {1, 3, 16}), (0.5, {3, 16}), (0.0, set())])
def test_a_pruned_classifier_runs_its_nonzeros(amount: float, sparse_at: set) -> None:
    """The classifier in CSR where it is sparse enough at that batch (``sparse_linear``), dense
    otherwise; logits equal to eager in both."""
    from cnnprune.kernels import LINEAR
    from cnnprune.profile import steps_of

    torch.manual_seed(3)
    model = pruned(build("resnet18", 10), 0.5)
    if amount:
        prune.l1_unstructured(model.fc, "weight", amount=amount)
        prune.remove(model.fc, "weight")
    for batch in (1, 3, 16):
        engine = check(model, 32, batch, calibrate=False, layer_mode="sparse")
        linear = [step for step, _ in steps_of(engine.engine._program(batch)["program"]) if step.kind == LINEAR]
        assert len(linear) == 1 and bool(linear[0].ptr) == (batch in sparse_at), batch


def test_fusion_of_batchnorm_relu_and_residual() -> None:
    graph = trace(build("resnet50", 10).eval(), (3, 64, 64))
    ops = {op.name: op for op in graph.ops}
    conv3 = ops["layer1.0.conv3"]
    assert conv3.kind == "conv" and conv3.act == "relu" and conv3.residual is not None
    assert conv3.fused[0] == "layer1_0_bn3" and conv3.fused[1].startswith("add")
    assert ops["layer1.0.conv1"].act == "relu" and ops["layer1.0.downsample.0"].act == "none"
    assert ops["conv1"].kind == "conv" and ops["conv1"].border == 3 and graph.input_border == 3, \
        "the 7x7 padding-3 stem reads the input packed with a 3-pixel border"
    assert ops["layer1.0.conv1"].border == 1
    assert ops["maxpool"].kind == "maxpool" and ops["avgpool"].kind == "avgpool" and ops["fc"].kind == "linear"
    assert not any(op.name.startswith("bn") or ".bn" in op.name for op in graph.ops), "every BatchNorm folded"


def test_layers_that_add_a_residual_are_calibrated_with_one(monkeypatch) -> None:
    graph = trace(pruned(build("resnet50", 10), 0.9), (3, 64, 64))
    engine = GraphEngine(graph, 2)
    want = {op.output for op in graph.ops if op.kind == "conv" and op.residual is not None}
    assert want and {name for name, p in engine._layer_plans(2).items() if p.residual} == want
    calls = []
    original = engine._conv_steps

    def spy(p, mode, src, dst, res, *rest, **kw):
        calls.append((p.residual, res is not None, p.onto, dst is res))
        return original(p, mode, src, dst, res, *rest, **kw)
    monkeypatch.setattr(engine, "_conv_steps", spy)
    engine.run(np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32))
    assert sum(c[0] for c in calls) > len(want), "calibration and the program both built the residual layers"
    assert all(residual == given for residual, given, _, _ in calls)
    assert all(onto == over for _, _, onto, over in calls), "timed as run: over the residual where the program is"
    assert sum(c[2] for c in calls) > len(want), "every ResNet-50 block's last convolution writes over its residual"


class Reread(nn.Module):
    """Residual adds a convolution may not write over: a residual read again later, one that is
    the convolution's own input; and one it may."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        z = torch.relu(self.a(y) + y) * y  # y read after the add
        w = self.b(z) + z  # z is b's input
        return self.d(torch.relu(self.c(w))) + w


def test_a_convolution_writes_over_its_residual_only_where_that_is_its_last_reader() -> None:
    model = Reread().eval()
    graph = trace(model, (3, 12, 12))
    names = {op.output: op.name for op in graph.ops}
    assert {names[v] for v in overwritable_residuals(graph)} == {"d"}
    for mode in ("sparse", "gemm", None):
        check(model, 12, 3, layer_mode=mode)


def test_the_host_dense_convolution_is_timed_only_where_it_can_win() -> None:
    """Where a native dense kernel (1x1 GEMM, Winograd) runs a pruned layer, calibration does
    not time the host's dense convolution (``native_plan.probes_host_dense``)."""
    engine = check(pruned(build("resnet50", 10), 0.6), 64, 2, dense_fallback=None)
    choice = engine.engine.layer_choice(2)
    plans = engine.engine._plan(2)["convs"]
    vw = engine.engine.lib.vector_width()
    for k, v in choice.items():  # every span layer calibrated one of its tilings, and kept it
        tiles = plans[k].tilings(2, vw)
        assert v["span_tile"] in {t.label for t in tiles} if plans[k].span else v["span_tile"] == "", k
    native = {k for k, v in choice.items() if not (np.isnan(v["gemm_ms"]) and np.isnan(v["winograd_ms"]))}
    timed = {k for k, v in choice.items() if not np.isnan(v["dense_ms"])}
    assert native and timed, "the network has layers of both kinds"
    assert timed == {k for k, v in choice.items()
                     if plans[k].dense_ok and (k not in native or v["density"] > HOST_DENSE_DENSITY)}


def test_plan_summary_and_whole_network_fallback() -> None:
    torch.manual_seed(2)
    model = pruned(build("resnet18", 10), 0.2)
    engine = NativeSparseResNet(trace(model, (3, 64, 64)), threads=2, dense_fallback=model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (engine(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()
    choice = engine.engine_for(2)
    rows = engine.plan_summary(2)
    runs = {r["runs"] for r in rows}
    dense = set(fallback_names())
    assert choice["dense_engine"] in dense and choice["dense_ms"] > 0 and choice["sparse_ms"] > 0
    assert runs == {choice["engine"]} if choice["engine"] in dense else not runs & dense
    assert len(rows) == len(engine.engine.graph.ops)


def test_a_dense_fallback_drops_the_sparse_program_and_runs_the_dense_engine(tmp_path) -> None:
    torch.manual_seed(4)
    model = pruned(build("resnet18", 10), 0.2).eval()
    calls: list[str] = []

    def slow_sparse_is_beaten(name: str):
        def make():
            def run(x):
                calls.append(name)
                with torch.no_grad():
                    return model(torch.from_numpy(x)).numpy()
            return run
        return make

    graph = trace(model, (3, 64, 64))
    options = dict(fallbacks={"fast": slow_sparse_is_beaten("fast")}, cache=PlanCache("m", folder=tmp_path))
    engine = GraphEngine(graph, 2, **options)
    engine._run_sparse = lambda x: time.sleep(0.5)  # the sparse program made to lose the whole-network timing
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(engine.run(x), model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert engine.engine_for(2)["engine"] == "fast" and calls[-1] == "fast"
    plan = engine._plans[2]
    assert set(plan) <= {"convs", "engine", "sparse_ms", "dense_ms", "dense_engine"}, "program and buffers dropped"
    assert all(p.val is None and p.g is None and p.u is None for p in plan["convs"].values()), "operands dropped"
    assert not engine._u and not engine._g
    assert list(engine._dense) == ["fast"], "the dense engine that runs is held"
    again = GraphEngine(graph, 2, **options)
    with torch.no_grad():
        np.testing.assert_allclose(again.run(x), model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert again.engine_for(2)["engine"] == "fast" and "program" not in again._plans[2], \
        "a cached dense decision builds no sparse program"


def test_sparse_load_plans_any_architecture_from_its_manifest(tmp_path) -> None:
    torch.manual_seed(3)
    model = pruned(build("resnet18", 7), 0.9)
    csr.save(model.state_dict(), tmp_path / "m.csr.pt")
    (tmp_path / "manifest.json").write_text(json.dumps({"model": ModelSpec("resnet18", 7, 64).record()}))
    loaded = sparse.load(tmp_path / "m.csr.pt", threads=2, dense_fallback=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()
    assert loaded.plan_summary(2)[0]["op"] == "conv1"
    with pytest.raises(CnnpruneError, match=r"input must be \(N, 3, 64, 64\)"):
        loaded(torch.randn(1, 3, 32, 32))
    with pytest.raises(CnnpruneError, match="torch-csr runs resnet18-cifar"):
        sparse.load(tmp_path / "m.csr.pt", engine="torch-csr")
    assert sparse.unsupported(ModelSpec("resnet50", 1000, 224)) is None


def test_untraceable_model_is_one_line() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(CnnpruneError, match="could not trace Branchy"):
        trace(Branchy(), (3, 8, 8))


def test_gemm_weights_are_shared_by_batch_sizes() -> None:
    """The native GEMM's packed dense weights are made once per layer, whatever the batch sizes
    planned, and dropped with the last plan that uses them."""
    torch.manual_seed(3)
    model = pruned(build("resnet50", 10), 0.5)
    engine = check(model, 32, 1, calibrate=False, layer_mode="gemm")
    engine(torch.randn(2, 3, 32, 32))
    plans = engine.engine._plans
    gemm = [name for name, p in plans[1]["convs"].items() if p.mode == "gemm"]
    assert gemm, "1x1 convolutions run the native GEMM"
    assert all(plans[1]["convs"][k].g is plans[2]["convs"][k].g for k in gemm)
    assert set(engine.engine._g) == {plans[1]["convs"][k].conv.name for k in gemm}
