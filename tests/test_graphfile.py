"""cnnprune.graphfile: a traced plan written and read back is the same plan (the runtime's logits
equal eager PyTorch's and the torch-hosted engine's); a fresh process serves it without torch;
every kind of corrupt file is one line naming it, never an exception from deeper down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnprune import graphfile, runtime
from cnnprune.csrfile import read_safetensors, write_safetensors
from cnnprune.errors import CnnpruneError
from cnnprune.fold import Csr
from cnnprune.graph import trace
from cnnprune.graph_engine import GraphEngine
from tests.test_graph import Odd, pruned
from tests.test_runtime import _child_env


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, nn.Module]:
    """MobileNetV3-small at 32 px, half pruned: depthwise and grouped convolutions, hardswish,
    squeeze-and-excitation gates (scale), global pooling and a two-layer classifier."""
    model = pruned(_build("mobilenet_v3_small"), 0.5)
    path = tmp_path_factory.mktemp("g") / f"m{graphfile.SUFFIX}"
    graphfile.write(path, trace(model, (3, 32, 32)), {"arch": "mobilenet_v3_small", "input_size": 32})
    return path, model


def _build(arch: str) -> nn.Module:
    """A torchvision network with 10 classes and its seeded initialisation."""
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, arch)(num_classes=10)


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("arch, amount", [("mobilenet_v3_small", 0.5), ("resnet18", 0.8)])
def test_the_plan_read_back_is_the_plan_written(tmp_path: Path, arch: str, amount: float) -> None:
    model = pruned(_build(arch), amount)
    graph = trace(model, (3, 32, 32))
    graphfile.write(tmp_path / f"m{graphfile.SUFFIX}", graph, {"arch": arch})
    back, spec = graphfile.read(tmp_path / f"m{graphfile.SUFFIX}")
    assert spec == {"arch": arch}
    assert [(o.kind, o.inputs, o.output, o.shape, o.act, o.residual, o.border) for o in back.ops] == \
        [(o.kind, o.inputs, o.output, tuple(o.shape), o.act, o.residual, o.border) for o in graph.ops]
    for a, b in zip(graph.ops, back.ops):
        if a.conv is not None:
            assert np.array_equal(a.conv.dense(), b.conv.dense()) and np.array_equal(a.conv.bias, b.conv.bias)
            assert (a.conv.stride, a.conv.padding, tuple(a.conv.shape)) == (b.conv.stride, b.conv.padding, b.conv.shape)
    assert any(isinstance(o.conv.weight, Csr) for o in back.ops if o.kind == "conv")
    x = _images(3)
    with torch.no_grad():
        want = model(x).numpy()
    got = runtime.load(tmp_path / f"m{graphfile.SUFFIX}", threads=2, cache=False)(x.numpy())
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    hosted = GraphEngine(trace(model, (3, 32, 32)), 2, calibrate=False).run(x.numpy())
    assert np.abs(got - hosted).max() <= 1e-5 * np.abs(want).max()


def test_a_graph_with_pytorch_ops_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(CnnpruneError, match="run in PyTorch"):
        graphfile.write(tmp_path / f"m{graphfile.SUFFIX}", trace(Odd().eval(), (3, 16, 16)), {})
    assert not list(tmp_path.iterdir())


def test_a_fresh_process_serves_it_without_torch(written, tmp_path: Path) -> None:
    path, model = written
    x = _images(2)
    with torch.no_grad():
        np.save(tmp_path / "want.npy", model(x).numpy())
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import sys, numpy as np; from cnnprune import runtime; "
            f"m = runtime.load({str(path)!r}, threads=2); y = m(np.load({str(tmp_path / 'x.npy')!r})); "
            f"w = np.load({str(tmp_path / 'want.npy')!r}); "
            "print(float(np.abs(y - w).max() / np.abs(w).max()), y.shape, m.input_shape, "
            "sorted(k for k in ('torch', 'onnxruntime', 'torchvision') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(tmp_path), capture_output=True, text=True, check=True).stdout
    diff, rest = out.split(" ", 1)
    assert float(diff) <= 1e-4
    assert rest.strip() == "(2, 10) (3, 32, 32) []"


def _rewrite(path: Path, out: Path, edit_graph=None, edit_tensors=None) -> Path:
    """A copy of ``path`` with its graph record and tensors edited (functions that change them in place)."""
    tensors, meta = read_safetensors(path)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    record = json.loads(meta["graph"])
    if edit_graph:
        edit_graph(record)
    if edit_tensors:
        edit_tensors(tensors)
    write_safetensors(out, tensors, {**meta, "graph": json.dumps(record)})
    return out


def _first(record: dict, kind: str) -> dict:
    return next(op for op in record["ops"] if op["kind"] == kind)


def _csr_op(tensors: dict) -> int:
    return int(next(k for k in sorted(tensors) if k.endswith("/indices")).split("/")[1])


CORRUPT = {
    "an index past its row": (None, lambda t: t[f"ops/{_csr_op(t)}/indices"].__setitem__(0, 1 << 30), "column indices"),
    "indices that do not rise": (None, lambda t: t[f"ops/{_csr_op(t)}/indices"].fill(0), "rise"),
    "row pointers past the nonzeros": (None, lambda t: t[f"ops/{_csr_op(t)}/indptr"].__setitem__(-1, 1 << 20),
                                       "row pointers"),
    "values that are not a vector": (None, lambda t: t.__setitem__(f"ops/{_csr_op(t)}/values", np.float32(1)), "values"),
    "a bias of the wrong size": (None, lambda t: t.__setitem__("ops/0/bias", np.zeros(3, np.float32)), "ops/0/bias"),
    "a tensor no op reads": (None, lambda t: t.__setitem__("extra", np.zeros(1, np.float32)), "no op reads"),
    "a value read before it is written": (lambda r: r["ops"][0].__setitem__("inputs", ["later"]), None, "no earlier op"),
    "a value written twice": (lambda r: r["ops"][1].__setitem__("output", r["ops"][0]["output"]), None, "written before"),
    "an unknown op": (lambda r: r["ops"][0].__setitem__("kind", "torch"), None, "kind"),
    "an unknown activation": (lambda r: r["ops"][0].__setitem__("act", "gelu"), None, "activation"),
    "an output shape its input cannot give": (lambda r: _first(r, "conv").__setitem__("shape", [16, 99, 99]), None,
                                              "writes"),
    "stride 3": (lambda r: _first(r, "conv")["conv"].__setitem__("stride", 3), None, "stride 3"),
    "a map too large to allocate": (lambda r: r.__setitem__("input_shape", [3, 65536, 65536]), None, "exceeds"),
    "a weight too large to plan": (lambda r: _first(r, "conv")["conv"].__setitem__("shape", [65536, 65536, 1, 1]), None,
                                   "exceeds"),
    "an output nothing writes": (lambda r: r.__setitem__("output", "nowhere"), None, "output"),
    "a missing field": (lambda r: r["ops"][0].pop("border"), None, "malformed"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_file_is_one_line_naming_it(written, tmp_path: Path, case: str) -> None:
    edit_graph, edit_tensors, words = CORRUPT[case]
    bad = _rewrite(written[0], tmp_path / f"bad{graphfile.SUFFIX}", edit_graph, edit_tensors)
    with pytest.raises(CnnpruneError, match=words) as e:
        runtime.load(bad, cache=False)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_other_files_are_refused(written, tmp_path: Path) -> None:
    tensors, meta = read_safetensors(written[0])
    write_safetensors(tmp_path / f"x{graphfile.SUFFIX}", dict(tensors), {**meta, "format": "cnnprune-csr"})
    with pytest.raises(CnnpruneError, match="format"):
        graphfile.read(tmp_path / f"x{graphfile.SUFFIX}")
    write_safetensors(tmp_path / f"y{graphfile.SUFFIX}", dict(tensors), {**meta, "graph": "{not json"})
    with pytest.raises(CnnpruneError, match="not JSON"):
        graphfile.read(tmp_path / f"y{graphfile.SUFFIX}")


FIELDS = ("shape", "in_shape", "border", "inputs", "residual", "stride", "padding", "weight")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.integers(0, 200), field=st.sampled_from(FIELDS),
       value=st.one_of(st.integers(-3, 70000), st.lists(st.integers(-1, 300), max_size=5), st.text(max_size=4),
                       st.none()))
@example(op=0, field="stride", value="\n")  # CI found it: a newline echoed into the one-line error
def test_any_edited_number_loads_consistently_or_is_one_line(written, tmp_path: Path, op: int, field: str,
                                                             value) -> None:
    """Whatever one field of one op is changed to, reading gives a plan whose every op checks
    out, or one line naming the file."""
    def edit(r: dict) -> None:
        target = r["ops"][op % len(r["ops"])]
        if field in ("stride", "padding") and "conv" in target:
            target["conv"][field] = value
        elif field == "weight" and "conv" in target:
            target["conv"]["shape"] = value
        else:
            target[field] = value

    bad = _rewrite(written[0], tmp_path / f"h{graphfile.SUFFIX}", edit)
    try:
        graph, _ = graphfile.read(bad)
    except CnnpruneError as e:
        assert str(bad) in str(e) and "\n" not in str(e)
        return
    shapes = {graph.input: graph.input_shape} | {o.output: o.shape for o in graph.ops}
    for o in graph.ops:
        assert all(v in shapes for v in o.inputs)
        if o.kind == "conv":
            assert o.in_shape == shapes[o.inputs[0]] and o.conv.shape[1] == o.in_shape[0]


class PoolGate(nn.Module):
    """A map scaled by its own global average pool, which a convolution also reads as a 1x1 map:
    both read the pool's (N, C) output natively, no value goes through PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        pooled = torch.nn.functional.adaptive_avg_pool2d(y, 1)
        y = (y * pooled) * torch.sigmoid(self.b(pooled))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_a_pool_read_as_factors_or_as_a_map_stays_native(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PoolGate().eval()
    graph = trace(model, (3, 8, 8))
    assert {op.kind for op in graph.ops} >= {"scale", "avgpool", "linear"} and not graphfile.pytorch_ops(graph)
    graphfile.write(tmp_path / f"p{graphfile.SUFFIX}", graph, {})
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    got = runtime.load(tmp_path / f"p{graphfile.SUFFIX}", threads=2, cache=False)(x.numpy())
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
