"""NAME.csr.safetensors: the safetensors format written and read without torch, interoperable
with the safetensors package, and hostile files refused in one line before any allocation."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnprune import csrfile
from cnnprune.errors import CnnpruneError
from cnnprune.fold import state_shapes

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int16, np.uint8, np.int8, np.bool_]


@st.composite
def tensor_tables(draw) -> dict[str, np.ndarray]:
    out = {}
    for i in range(draw(st.integers(0, 5))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
        a = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) * draw(st.integers(-3, 3))
        out[f"t{i}"] = np.asarray(a).astype(dtype)
    return out


@settings(max_examples=40, deadline=None)
@given(tensor_tables())
def test_safetensors_round_trip_and_interop(tmp_path_factory, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("st")
    csrfile.write_safetensors(folder / "ours.safetensors", tensors, {"k": "v"})
    back, meta = csrfile.read_safetensors(folder / "ours.safetensors")
    theirs = load_file(str(folder / "ours.safetensors"))
    for name, a in tensors.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape and np.array_equal(back[name], a)
        assert np.array_equal(theirs[name], a) and theirs[name].shape == a.shape
    assert meta == {"k": "v"}
    if tensors:  # the package refuses to write an empty table
        save_file(tensors, str(folder / "theirs.safetensors"), metadata={"a": "b"})
        again, meta = csrfile.read_safetensors(folder / "theirs.safetensors")
        assert all(np.array_equal(again[k], v) and again[k].shape == v.shape for k, v in tensors.items())
        assert meta == {"a": "b"}


def _state(classes: int = 10, density: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for k, shape in state_shapes(classes).items():
        if k.endswith("num_batches_tracked"):
            state[k] = np.array(7, dtype=np.int64)
        elif k.endswith("running_var"):
            state[k] = rng.random(shape, dtype=np.float32) + 0.5
        else:
            a = rng.standard_normal(shape, dtype=np.float32)
            if k.endswith(".weight") and len(shape) in (2, 4):
                a[rng.random(shape) >= density] = 0
            state[k] = a
    return state


def test_state_round_trips_bit_for_bit_in_small_layouts(tmp_path: Path) -> None:
    state = _state(classes=100)
    path = tmp_path / "m.csr.safetensors"
    csrfile.save_state(state, path, {"arch": "resnet18-cifar", "num_classes": 100, "input_size": 32})
    f = csrfile.read(path)
    f.check(state_shapes(100))
    assert f.model["num_classes"] == 100 and f.encoded, "pruned weights are stored encoded"
    back = f.state()
    assert back.keys() == state.keys()
    assert all(back[k].dtype == v.dtype and back[k].shape == v.shape and back[k].tobytes() == v.tobytes()
               for k, v in state.items())
    lazy = f.lazy_state()
    assert set(lazy) == set(state) and lazy["conv1.weight"].tobytes() == state["conv1.weight"].tobytes()
    assert path.stat().st_size < 0.3 * sum(v.nbytes for v in state.values())


def _rewrite(path: Path, out: Path, edit) -> Path:
    """A copy of ``path`` whose JSON header went through ``edit`` (its data kept as it was)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    return out


def test_hostile_and_corrupt_files_are_refused_in_one_line(tmp_path: Path) -> None:
    good = tmp_path / "good.csr.safetensors"
    csrfile.save_state(_state(), good)
    data = good.read_bytes()
    cases = {
        "short": (data[:5], "shorter than the 8-byte header length"),
        "huge-header": (struct.pack("<Q", 1 << 60) + data[8:], "exceeds the file"),
        "not-json": (struct.pack("<Q", 4) + b"{{{{" + data[12:], "not JSON"),
        "cut": (data[: len(data) - 100], "do not hold shape"),
    }
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(CnnpruneError, match=message):
            csrfile.read(tmp_path / name)
    first = next(k for k in json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]]) if k != "__metadata__")

    edits = {
        "foreign": (lambda h: h["__metadata__"].update(format="other"), "not a cnnprune CSR file"),
        "version": (lambda h: h["__metadata__"].update(version="9"), "version 9"),
        "dtype": (lambda h: h[first].update(dtype="F99"), "invalid header entry"),
        "overlap": (lambda h: h[first].update(data_offsets=[0, h[first]["data_offsets"][1] - h[first]["data_offsets"][0]])
                    if h[first]["data_offsets"][0] else h.pop(first), "overlap, leave holes"),
        "shape": (lambda h: h[first].update(shape=[-1]), "invalid shape"),
        "layouts": (lambda h: h["__metadata__"].update(layouts="[1"), "layouts table"),
        "unknown-layout": (lambda h: h["__metadata__"].update(layouts=json.dumps(
            {"conv1.weight": {"layout": "magic", "shape": [64, 3, 3, 3]}})), "unknown layout"),
        "missing-part": (lambda h: h["__metadata__"].update(layouts=json.dumps(
            {"fc.bias": {"layout": "csr", "shape": [10]}})), "lacks its part"),
    }
    for name, (edit, message) in edits.items():
        with pytest.raises(CnnpruneError, match=message):
            csrfile.read(_rewrite(good, tmp_path / f"{name}.csr.safetensors", edit))


def test_shapes_are_checked_against_the_architecture_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "m.csr.safetensors"
    csrfile.save_state(_state(), path)

    def enormous(h):
        layouts = json.loads(h["__metadata__"]["layouts"])
        layouts["layer4.1.conv2.weight"]["shape"] = [1 << 30, 1 << 30, 3, 3]
        h["__metadata__"]["layouts"] = json.dumps(layouts)
    f = csrfile.read(_rewrite(path, tmp_path / "big.csr.safetensors", enormous))
    with pytest.raises(CnnpruneError, match=r"layer4.1.conv2.weight has shape \[1073741824"):
        f.check(state_shapes(10))
    with pytest.raises(CnnpruneError, match="lacks 'extra.weight'"):
        csrfile.read(path).check({**state_shapes(10), "extra.weight": (1,)})
    with pytest.raises(CnnpruneError, match="unexpected tensor"):
        csrfile.read(path).check({k: v for k, v in state_shapes(10).items() if k != "fc.bias"})
