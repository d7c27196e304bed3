"""``NAME.graph.safetensors``: a traced model's native plan (:class:`cnnprune.plan.Graph`), BatchNorm
folded and dead channels cut, in safetensors, so that the torch-free runtime (:mod:`cnnprune.runtime`)
serves any architecture whose every op runs natively, without torch or torchvision.

``python -m cnnprune.export --sparse`` writes it beside ``NAME.csr.safetensors`` wherever the
graph has no op left in PyTorch (ResNets, MobileNetV2/V3, EfficientNet-B0, ResNeXt, RegNet at
the sizes tested). It holds what the engine executes, not the checkpoint: the folded weights
(CSR where that is smaller, int32 indices, float32 values; dense otherwise) and biases, one
tensor per part (``ops/I/bias``, ``ops/I/weight`` or ``ops/I/indptr|indices|values``), and the
metadata ``format`` ("cnnprune-graph"), ``version`` ("1"), ``graph`` (JSON: the ops in order,
their values and shapes, fused activations, residuals, borders, channel cuts) and ``model``
(JSON: the model spec).

Reading trusts nothing it did not check, since the kernels index memory with these numbers:
the safetensors header (:func:`cnnprune.csrfile.read_safetensors`); every op's kind, activation,
stride, padding and shapes; every value read before it is written and with the shape its reader
expects; each map below ``MAX_MAP_FLOATS`` floats an image and each convolution's weight below
``MAX_WEIGHT_FLOATS`` (planning allocates from both); each weight's dtype and shape; and
each CSR's row pointers (from 0, non-decreasing, to its nonzero count) and column indices
(inside the row, increasing). A failure is one line naming the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from cnnprune.csrfile import read_safetensors, write_safetensors
from cnnprune.errors import CnnpruneError
from cnnprune.fold import Csr, FoldedConv
from cnnprune.plan import ACTS, NONNEG_ACTS, ChannelCut, Graph, GraphOp

FORMAT = "cnnprune-graph"
VERSION = "1"
SUFFIX = ".graph.safetensors"
KINDS = ("conv", "maxpool", "scale", "avgpool", "linear")
MAX_DIM = 1 << 16  # channels or pixels along one axis
MAX_MAP_FLOATS = 1 << 27  # one image's map (512 MB of float32): the engine allocates N times this
# a convolution's dense weight (256 MB of float32): planning may make it dense (the 1x1 GEMM) or
# 16/9 of it again (Winograd), whatever few nonzeros the file holds; torchvision's largest is 9.4 M
MAX_WEIGHT_FLOATS = 1 << 26
MAX_KERNEL = 15  # pixels


def _fail(path: Path, why: str) -> CnnpruneError:
    # Names and numbers in ``why`` come from the file: escape what would break the one line.
    why = "".join(c if c.isprintable() else repr(c)[1:-1] for c in why)
    return CnnpruneError(f"{path}: {why}; the file is corrupt or not a cnnprune {SUFFIX} export "
                         "(make one with `python -m cnnprune.export --sparse`)")


def pytorch_ops(graph: Graph) -> list[GraphOp]:
    """The ops of ``graph`` that need PyTorch (the runtime serves graphs without any)."""
    return [op for op in graph.ops if op.kind not in KINDS]


# ---------------------------------------------------------------- writing


def _op_record(op: GraphOp, conv: FoldedConv | None) -> dict:
    rec = {"kind": op.kind, "name": op.name, "inputs": list(op.inputs), "output": op.output, "shape": list(op.shape),
           "act": op.act, "residual": op.residual, "fused": list(op.fused), "in_shape": list(op.in_shape),
           "grouped": op.grouped, "border": op.border}
    if conv is not None:
        rec["conv"] = {"name": conv.name, "shape": list(conv.shape), "stride": conv.stride,
                       "padding": conv.padding, "csr": isinstance(conv.weight, Csr)}
    return rec


def _op_tensors(i: int, conv: FoldedConv) -> dict[str, np.ndarray]:
    w = conv.weight
    parts = {"indptr": w.indptr, "indices": w.indices, "values": w.values} if isinstance(w, Csr) else \
        {"weight": w.reshape(w.shape[0], -1)}  # the (Cout, Cin·k·k) matrix, as CSR's rows and columns
    return {f"ops/{i}/{k}": np.ascontiguousarray(v) for k, v in parts.items()} | {f"ops/{i}/bias": conv.bias}


def write(path: str | os.PathLike[str], graph: Graph, model: dict) -> None:
    """Write ``graph`` (every op native; convolutions in CSR where that is smaller) with the model
    spec ``model``; ``graph`` itself is left as it is."""
    torch_ops = pytorch_ops(graph)
    if torch_ops:
        raise CnnpruneError(f"{len(torch_ops)} ops of this graph run in PyTorch (first: {torch_ops[0].name}: "
                            f"{torch_ops[0].why}); the torch-free runtime cannot serve it")
    tensors: dict[str, np.ndarray] = {}
    ops = []
    for i, op in enumerate(graph.ops):
        conv = op.conv.compact() if op.kind == "conv" else op.conv
        ops.append(_op_record(op, conv))
        if conv is not None:
            tensors |= _op_tensors(i, conv)
    record = {"input": graph.input, "output": graph.output, "input_shape": list(graph.input_shape), "ops": ops,
              "cuts": [[c.op, c.before, c.after, c.folded] for c in graph.cuts]}
    write_safetensors(path, tensors, {"format": FORMAT, "version": VERSION, "graph": json.dumps(record),
                                      "model": json.dumps(model)})


# ---------------------------------------------------------------- reading


def read(path: str | os.PathLike[str]) -> tuple[Graph, dict]:
    """The graph of a ``.graph.safetensors`` file and its model spec (a dict), every number checked."""
    path = Path(path)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise _fail(path, f"format {meta.get('format')!r} version {meta.get('version')!r}, "
                          f"expected {FORMAT!r} version {VERSION!r}")
    try:
        record, model = json.loads(meta.get("graph", "")), json.loads(meta.get("model", "{}"))
    except ValueError:
        raise _fail(path, "its graph or model metadata is not JSON") from None
    if not isinstance(record, dict) or not isinstance(model, dict):
        raise _fail(path, "its graph or model metadata is not a JSON object")
    try:
        return _Reader(path, tensors).graph(record), model
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(path, f"its graph is malformed ({type(e).__name__}: {str(e)[:120]})") from None


def _shape(value, dims: tuple[int, ...], what: str) -> tuple[int, ...]:
    """A list of ints, each 1..MAX_DIM, of one of the lengths ``dims``."""
    if not isinstance(value, list) or len(value) not in dims or \
            not all(type(v) is int and 1 <= v <= MAX_DIM for v in value):
        raise ValueError(f"{what} {value!r} is not a shape of {'/'.join(map(str, dims))} sizes in 1..{MAX_DIM}")
    return tuple(value)


class _Reader:
    """One file's graph record turned into a :class:`Graph`, each op checked against the values
    before it (``shapes``: every value written so far, by name)."""

    def __init__(self, path: Path, tensors: dict[str, np.ndarray]) -> None:
        self.path, self.tensors = path, tensors
        self.used: set[str] = set()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.nonneg: set[str] = set()  # values never negative: the zero border stands for -inf in a max pool
        self.flat: set[str] = set()  # (N, C) arrays (global pools, linear layers), not padded maps

    def fail(self, op: int, why: str) -> CnnpruneError:
        return _fail(self.path, f"op {op}: {why}")

    def graph(self, record: dict) -> Graph:
        input_shape = _shape(record["input_shape"], (3,), "input_shape")
        self._map(input_shape, -1)
        name = record["input"]
        if not isinstance(name, str):
            raise ValueError("the input name is not a string")
        self.shapes[name] = input_shape
        ops = [self.op(i, r) for i, r in enumerate(record["ops"])]
        if record["output"] not in self.shapes or record["output"] == name:
            raise _fail(self.path, f"its output {record['output']!r} is not written by any op")
        if set(self.tensors) != self.used:
            raise _fail(self.path, f"tensors no op reads: {sorted(set(self.tensors) - self.used)[:3]}")
        cuts = [ChannelCut(str(c[0]), int(c[1]), int(c[2]), int(c[3])) for c in record["cuts"]]
        return Graph(ops, name, record["output"], input_shape, cuts)

    def _map(self, shape: tuple[int, ...], i: int) -> None:
        if int(np.prod(shape, dtype=np.int64)) > MAX_MAP_FLOATS:
            raise self.fail(i, f"a map of {shape} floats exceeds {MAX_MAP_FLOATS} an image")

    def op(self, i: int, r: dict) -> GraphOp:
        kind, act = r["kind"], r["act"]
        if kind not in KINDS:
            raise self.fail(i, f"kind {kind!r} is not one the runtime runs ({', '.join(KINDS)})")
        if act not in ACTS:
            raise self.fail(i, f"activation {act!r} is unknown")
        inputs = r["inputs"]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(v, str) and v in self.shapes for v in inputs):
            raise self.fail(i, f"reads {inputs!r}, values no earlier op writes")
        out = r["output"]
        if not isinstance(out, str) or out in self.shapes:
            raise self.fail(i, f"writes {out!r}, a value written before")
        shape = _shape(r["shape"], (1, 3), "shape")
        self._map(shape, i)
        if kind == "linear" and not all(v in self.flat for v in inputs):
            raise self.fail(i, f"a linear layer reading {inputs}, not a global pool's or another linear layer's output")
        if kind != "conv" and r["border"] != 1:
            raise self.fail(i, f"a border of {r['border']!r} on a {kind}")
        op = GraphOp(kind, str(r["name"]), inputs, out, shape, act=act, nonneg=act in NONNEG_ACTS,
                     fused=[str(f) for f in r["fused"]], border=int(r["border"]), grouped=bool(r["grouped"]))
        getattr(self, f"_{kind}")(i, op, r)
        self.shapes[out] = shape
        if op.nonneg:
            self.nonneg.add(out)
        if kind in ("avgpool", "linear"):
            self.flat.add(out)
        return op

    def _conv(self, i: int, op: GraphOp, r: dict) -> None:
        c = r["conv"]
        cout, cin, k, k2 = _shape(c["shape"], (4,), "weight shape")
        stride, pad = c["stride"], c["padding"]
        if k != k2 or k > MAX_KERNEL or type(stride) is not int or stride not in (1, 2) or type(pad) is not int \
                or not 0 <= pad <= k:
            raise self.fail(i, f"kernel {k}x{k2}, stride {stride!r}, padding {pad!r}: not a convolution the kernels run")
        if cout * cin * k * k > MAX_WEIGHT_FLOATS:
            raise self.fail(i, f"a weight of {cout}x{cin}x{k}x{k} floats exceeds {MAX_WEIGHT_FLOATS}")
        ch, h, w = op.in_shape = self.shapes[op.inputs[0]]
        if len(op.in_shape) != 3 or ch != cin or _shape(r["in_shape"], (3,), "in_shape") != op.in_shape:
            raise self.fail(i, f"reads {op.inputs[0]} of shape {op.in_shape} with a weight of {cin} input channels")
        if stride == 2 and (h % 2 or w % 2):
            raise self.fail(i, f"stride 2 on an odd map {h}x{w}")
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if op.shape != (cout, ho, wo) or op.border != max(1, pad):
            raise self.fail(i, f"writes {op.shape} with border {op.border}, where its input and weight give "
                               f"{(cout, ho, wo)} and {max(1, pad)}")
        if r["residual"] is not None:
            if len(op.inputs) != 2 or r["residual"] != op.inputs[1] or self.shapes[op.inputs[1]] != op.shape:
                raise self.fail(i, "its residual is not its second input or has another shape than its output")
            op.residual = op.inputs[1]
        elif len(op.inputs) != 1:
            raise self.fail(i, f"reads {len(op.inputs)} values without a residual")
        op.conv = FoldedConv(str(c["name"]), self._weight(i, (cout, cin * k * k), c["csr"]), self._bias(i, cout),
                             stride, pad, (cout, cin, k, k))
        if not c["csr"]:
            op.conv.weight = op.conv.weight.reshape(cout, cin, k, k)

    def _linear(self, i: int, op: GraphOp, r: dict) -> None:
        cout, cin = _shape(r["conv"]["shape"], (2,), "weight shape")
        src = self.shapes[op.inputs[0]]
        if len(op.inputs) != 1 or self._features(src) != cin or op.shape != (cout,) or r["conv"]["csr"]:
            raise self.fail(i, f"a linear layer {cin} -> {cout} reading {src} and writing {op.shape}")
        op.conv = FoldedConv(str(r["conv"]["name"]), self._weight(i, (cout, cin), False), self._bias(i, cout), 1, 0)

    @staticmethod
    def _features(shape: tuple[int, ...]) -> int:
        """Features of a flat value: (C,) or a pool's (C, 1, 1); 0 for a map."""
        return shape[0] if len(shape) == 1 or shape[1:] == (1, 1) else 0

    def _maxpool(self, i: int, op: GraphOp, r: dict) -> None:
        c, h, w = self._one_map(i, op)
        if h % 2 or w % 2 or op.shape != (c, h // 2, w // 2) or op.inputs[0] not in self.nonneg:
            raise self.fail(i, f"a 3x3/2 max pool of {(c, h, w)} writing {op.shape}, or of a value that can be negative")
        op.nonneg = True

    def _avgpool(self, i: int, op: GraphOp, r: dict) -> None:
        c = self._one_map(i, op)[0]
        if op.shape != (c, 1, 1):
            raise self.fail(i, f"a global average pool of {c} channels writing {op.shape}")

    def _scale(self, i: int, op: GraphOp, r: dict) -> None:
        if len(op.inputs) != 2:
            raise self.fail(i, "a scale reads a map and its factors")
        shape, factors = (self.shapes[v] for v in op.inputs)
        if len(shape) != 3 or factors != (shape[0], 1, 1) or op.shape != shape:
            raise self.fail(i, f"scales {shape} by {factors} into {op.shape}")

    def _one_map(self, i: int, op: GraphOp) -> tuple[int, ...]:
        shape = self.shapes[op.inputs[0]]
        if len(op.inputs) != 1 or len(shape) != 3:
            raise self.fail(i, f"reads {op.inputs}, not one map")
        return shape

    def _tensor(self, i: int, part: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
        name = f"ops/{i}/{part}"
        a = self.tensors.get(name)
        if a is None or a.dtype != dtype or a.shape != shape:
            got = "missing" if a is None else f"{a.dtype} {a.shape}"
            raise self.fail(i, f"tensor {name} is {got}, expected {np.dtype(dtype)} {shape}")
        self.used.add(name)
        return np.array(a)  # owned and writable: the engine keeps it, the file's bytes go

    def _bias(self, i: int, cout: int) -> np.ndarray:
        return self._tensor(i, "bias", np.float32, (cout,))

    def _weight(self, i: int, matrix: tuple[int, int], csr: bool) -> np.ndarray | Csr:
        if not csr:
            return self._tensor(i, "weight", np.float32, matrix)
        rows, cols = matrix
        values = self.tensors.get(f"ops/{i}/values")
        nnz = values.shape[0] if values is not None and values.ndim == 1 else 0  # else _tensor names the mismatch
        values = self._tensor(i, "values", np.float32, (nnz,))  # first: its length is the one read above
        indptr = self._tensor(i, "indptr", np.int32, (rows + 1,))
        indices = self._tensor(i, "indices", np.int32, (nnz,))
        step = np.diff(indptr)
        if indptr[0] != 0 or indptr[-1] != nnz or (step < 0).any():
            raise self.fail(i, "its CSR row pointers do not run from 0 up to its nonzero count")
        inside = (indices >= 0) & (indices < cols)
        rising = np.diff(indices) > 0
        row_start = np.zeros(max(nnz - 1, 0), dtype=bool)
        row_start[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < nnz)] - 1] = True
        if not inside.all() or not (rising | row_start).all():
            raise self.fail(i, f"its CSR column indices leave 0..{cols - 1} or do not rise within a row")
        return Csr(indptr, indices, values)
