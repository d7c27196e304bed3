"""BatchNorm folded into the convolutions of the CIFAR ResNet18: what every sparse engine executes.

w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε), so exact zeros stay zeros and the pruning's sparsity
is kept; the network becomes a stem, eight residual blocks and the classifier. Numpy only (no
torch): the torch-free runtime (:mod:`cnnprune.runtime`) folds with it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

BN_EPS = 1e-5
# the network's shape as data: (output channels, residual blocks) per stage; the first block of
# every stage but the first halves the map (stride 2) and gets a 1x1 downsample
STAGES = ((64, 2), (128, 2), (256, 2), (512, 2))
STEM = ("conv1", "bn1", 64, 3)  # conv, its BatchNorm, output channels, kernel size (stride 1, padding 1)
MAX_CLASSES = 1 << 20
INPUT_SIZE = 32  # pixels: the CIFAR input the plan is made for
ARCH = "resnet18-cifar"  # its name in cnnprune.archs (which needs torch, so the name is kept here too)


@dataclass
class Csr:
    """A (Cout, Cin·k·k) weight matrix in CSR with int32 indices (8 bytes per nonzero)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray


@dataclass
class Coo:
    """A weight given as its stored entries (``layouts.decode_coo``): the rows and columns of its
    (Cout, Cin·k·k) matrix view, row-major, and their values. Folding it makes no dense copy."""

    shape: tuple[int, ...]
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray

    def dense(self) -> np.ndarray:
        m = np.zeros((self.shape[0], int(np.prod(self.shape[1:]))), dtype=self.values.dtype)
        m[self.rows, self.cols] = self.values
        return m.reshape(self.shape)


def _array(a: np.ndarray | Coo) -> np.ndarray:
    return np.ascontiguousarray(a.dense() if isinstance(a, Coo) else a, dtype=np.float32)


@dataclass
class FoldedConv:
    """A convolution with its BatchNorm folded in: y = conv(x, weight) + bias. ``weight`` is
    dense (Cout, Cin, k, k) float32, or, after ``compact()``, a ``Csr`` matrix where that is
    smaller: how the native engine keeps it between plans."""

    name: str
    weight: np.ndarray | Csr
    bias: np.ndarray  # (Cout,)
    stride: int
    padding: int
    shape: tuple[int, int, int, int] = ()

    def __post_init__(self) -> None:
        if not self.shape:
            self.shape = tuple(self.weight.shape)

    def dense(self) -> np.ndarray:
        if isinstance(self.weight, np.ndarray):
            return self.weight
        m = np.zeros((self.shape[0], int(np.prod(self.shape[1:]))), dtype=np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.weight.indptr))
        m[rows, self.weight.indices] = self.weight.values
        return m.reshape(self.shape)

    def compact(self) -> FoldedConv:
        """The same convolution with its weight in CSR, where that is smaller than dense (8 bytes
        per nonzero against 4 per weight: below half density)."""
        if isinstance(self.weight, Csr) or 8 * self.nnz + 4 * (self.shape[0] + 1) >= self.weight.nbytes:
            return self
        m = self.dense().reshape(self.shape[0], -1)
        rows, cols = np.nonzero(m)
        indptr = np.zeros(self.shape[0] + 1, dtype=np.int32)
        indptr[1:] = np.cumsum(np.bincount(rows, minlength=self.shape[0]))
        csr = Csr(indptr, cols.astype(np.int32), m[rows, cols])
        return FoldedConv(self.name, csr, self.bias, self.stride, self.padding, self.shape)

    def coo(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every nonzero's output channel, input channel, kernel row and column, and value, in
        row-major order, read from CSR without making the dense weight (planning a layer4
        convolution that way held 9 MB for 5 % of it)."""
        if isinstance(self.weight, np.ndarray):
            co, ci, ky, kx = np.nonzero(self.weight)
            return co, ci, ky, kx, self.weight[co, ci, ky, kx]
        k = self.shape[3]
        kk = self.shape[2] * k
        col = self.weight.indices
        co = np.repeat(np.arange(self.shape[0], dtype=np.int32), np.diff(self.weight.indptr))
        return co, col // kk, (col % kk) // k, col % k, self.weight.values

    @property
    def nnz(self) -> int:
        return int(self.weight.values.size if isinstance(self.weight, Csr) else np.count_nonzero(self.weight))

    @property
    def density(self) -> float:
        return self.nnz / float(np.prod(self.shape))

    def weight_bytes(self) -> int:
        """Bytes of the weight as held (dense, or CSR values and indices) and the bias."""
        w = self.weight
        held = [w] if isinstance(w, np.ndarray) else [w.values, w.indptr, w.indices]
        return sum(a.nbytes for a in held + [self.bias])


@dataclass
class Block:
    conv1: FoldedConv
    conv2: FoldedConv
    downsample: FoldedConv | None


@dataclass
class FoldedResNet:
    """The CIFAR ResNet18 as a list of folded convolutions: what both engines execute."""

    stem: FoldedConv
    blocks: list[Block]
    fc_weight: np.ndarray
    fc_bias: np.ndarray

    def convs(self) -> list[FoldedConv]:
        out = [self.stem]
        for b in self.blocks:
            out += [b.conv1, b.conv2] + ([b.downsample] if b.downsample else [])
        return out


@dataclass(frozen=True)
class ConvSpec:
    """One convolution of the network and its BatchNorm (state_dict prefixes)."""

    conv: str
    bn: str
    cout: int
    cin: int
    k: int
    stride: int
    padding: int


def block_specs() -> Iterator[tuple[ConvSpec, ConvSpec, ConvSpec | None]]:
    """Every residual block's conv1, conv2 and downsample (None where the block has none)."""
    cin = STEM[2]
    for layer, (width, blocks) in enumerate(STAGES, 1):
        for index in range(blocks):
            p = f"layer{layer}.{index}"
            stride = 2 if layer > 1 and index == 0 else 1
            down = ConvSpec(f"{p}.downsample.0", f"{p}.downsample.1", width, cin, 1, stride, 0) \
                if stride != 1 or cin != width else None
            yield (ConvSpec(f"{p}.conv1", f"{p}.bn1", width, cin, 3, stride, 1),
                   ConvSpec(f"{p}.conv2", f"{p}.bn2", width, width, 3, 1, 1), down)
            cin = width


def stem_spec() -> ConvSpec:
    conv, bn, cout, k = STEM
    return ConvSpec(conv, bn, cout, 3, k, 1, 1)


def state_shapes(classes: int) -> dict[str, tuple[int, ...]]:
    """The state_dict of the CIFAR ResNet18 with ``classes`` outputs: every key and its shape.
    Files are checked against it before anything is allocated from the shapes they declare."""
    specs = [stem_spec()] + [s for block in block_specs() for s in block if s is not None]
    shapes: dict[str, tuple[int, ...]] = {}
    for s in specs:
        shapes[f"{s.conv}.weight"] = (s.cout, s.cin, s.k, s.k)
        shapes.update({f"{s.bn}.{part}": (s.cout,) for part in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{s.bn}.num_batches_tracked"] = ()
    shapes["fc.weight"] = (classes, STAGES[-1][0])
    shapes["fc.bias"] = (classes,)
    return shapes


def fold_bn(state: Mapping[str, np.ndarray | Coo], s: ConvSpec) -> FoldedConv:
    """w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε) in float32: exact zeros stay zeros, so sparsity is
    kept. A ``Coo`` weight is folded entry by entry into CSR (dense where CSR is not smaller)."""
    def get(key: str) -> np.ndarray:
        return _array(state[key])

    scale = get(f"{s.bn}.weight") / np.sqrt(get(f"{s.bn}.running_var") + np.float32(BN_EPS))
    bias = np.ascontiguousarray(get(f"{s.bn}.bias") - get(f"{s.bn}.running_mean") * scale)
    w = state[f"{s.conv}.weight"]
    if isinstance(w, Coo):
        shape = tuple(w.shape)
        indptr = np.zeros(shape[0] + 1, dtype=np.int32)
        indptr[1:] = np.cumsum(np.bincount(w.rows, minlength=shape[0]))
        csr = Csr(indptr, w.cols.astype(np.int32), w.values.astype(np.float32) * scale[w.rows])
        conv = FoldedConv(s.conv, csr, bias, s.stride, s.padding, shape)
        return conv if 8 * conv.nnz + 4 * (shape[0] + 1) < 4 * int(np.prod(shape)) else \
            FoldedConv(s.conv, conv.dense(), bias, s.stride, s.padding)
    weight = get(f"{s.conv}.weight") * scale.reshape(-1, 1, 1, 1)
    return FoldedConv(s.conv, np.ascontiguousarray(weight), bias, s.stride, s.padding)


def compact_net(net: FoldedResNet) -> FoldedResNet:
    """The same network with every convolution's weight in CSR (``FoldedConv.compact``)."""
    blocks = [Block(b.conv1.compact(), b.conv2.compact(), b.downsample.compact() if b.downsample else None)
              for b in net.blocks]
    return FoldedResNet(net.stem.compact(), blocks, net.fc_weight, net.fc_bias)


def fold_resnet(state: Mapping[str, np.ndarray], compact: bool = False) -> FoldedResNet:
    """The folded network of a CIFAR ResNet18 state_dict (numpy arrays, or anything
    ``numpy.asarray`` reads: CPU tensors). ``compact``: keep each weight in CSR as soon as it is
    folded, so that with a ``state`` that decodes on access (``csrfile.CsrFile.lazy_state``)
    only one layer is ever dense in memory."""
    def fold(s: ConvSpec) -> FoldedConv:
        conv = fold_bn(state, s)
        return conv.compact() if compact else conv

    blocks = [Block(fold(c1), fold(c2), fold(d) if d else None) for c1, c2, d in block_specs()]
    return FoldedResNet(fold(stem_spec()), blocks,
                        _array(state["fc.weight"]), _array(state["fc.bias"]))
