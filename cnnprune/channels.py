"""Channels that pruning left without effect, taken out of a traced plan (:mod:`cnnprune.graph`).

Unstructured pruning leaves whole channels empty: in MobileNetV2 pruned globally to 90 %, nearly
every depthwise channel has no nonzero weight, and the expansion channel that feeds it is then
computed only to be thrown away. Two exact rewrites, on the native convolutions only:

- **Constants folded forward.** An output channel whose weights are all zero is the constant
  ``act(bias)`` at every pixel (no residual is added to it). A 1×1 unpadded convolution reading it
  adds ``W[:, c]·act(bias)`` to its bias and stops reading it; any convolution can stop reading a
  channel that is the constant 0 (the zero border is 0 too). Before a padded k×k reader a nonzero
  constant is not constant at the border, so it stays.
- **Unread channels removed backward.** An output channel that no reader uses — every reader is
  a native convolution whose weights on that input channel are all zero — is dropped from the
  producer (its weight row and bias) and from the readers (their input channel). A depthwise
  producer then no longer reads the matching channel of its own input, so the removal goes on up.

A value read by anything else (a residual add, pooling, a PyTorch op, the model's output) keeps
every channel. Every value keeps at least one channel, so that no buffer is empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cnnprune.activations import apply_activation
from cnnprune.fold import Csr, FoldedConv
from cnnprune.plan import ChannelCut, Graph, GraphOp


@dataclass(frozen=True)
class _Entries:
    """A convolution's nonzero weights as parallel arrays (``FoldedConv.coo``)."""

    co: np.ndarray
    ci: np.ndarray
    ky: np.ndarray
    kx: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, conv: FoldedConv) -> _Entries:
        return cls(*conv.coo())

    def keep(self, mask: np.ndarray) -> _Entries:
        return _Entries(self.co[mask], self.ci[mask], self.ky[mask], self.kx[mask], self.values[mask])


def _row_counts(conv: FoldedConv) -> np.ndarray:
    """Nonzero weights per output channel (without listing them: most layers have no empty row)."""
    if isinstance(conv.weight, np.ndarray):
        return np.count_nonzero(conv.weight.reshape(conv.shape[0], -1), axis=1)
    return np.diff(conv.weight.indptr)


def _reads(conv: FoldedConv) -> np.ndarray:
    """Per input channel, whether any nonzero weight reads it."""
    if isinstance(conv.weight, np.ndarray):
        return np.any(conv.weight != 0, axis=(0, 2, 3))
    used = np.zeros(conv.shape[1], dtype=bool)
    used[conv.weight.indices // (conv.shape[2] * conv.shape[3])] = True
    return used


def _rebuilt(conv: FoldedConv, e: _Entries, bias: np.ndarray, cout: int, cin: int) -> FoldedConv:
    """``conv`` with only the entries ``e`` (already renumbered), in the form its weight had."""
    k0, k1 = conv.shape[2:]
    shape = (cout, cin, k0, k1)
    bias = np.ascontiguousarray(bias, dtype=np.float32)
    if isinstance(conv.weight, np.ndarray):
        w = np.zeros(shape, dtype=np.float32)
        w[e.co, e.ci, e.ky, e.kx] = e.values
        return FoldedConv(conv.name, w, bias, conv.stride, conv.padding)
    indptr = np.zeros(cout + 1, dtype=np.int32)
    indptr[1:] = np.cumsum(np.bincount(e.co, minlength=cout))
    cols = ((e.ci * k0 + e.ky) * k1 + e.kx).astype(np.int32)
    return FoldedConv(conv.name, Csr(indptr, cols, np.ascontiguousarray(e.values, dtype=np.float32)), bias,
                      conv.stride, conv.padding, shape)


def _readers(graph: Graph) -> dict[str, list[tuple[GraphOp, bool]]]:
    """Per value, its readers and whether each reads it as a native convolution's main input (the
    only reading that can give up channels)."""
    readers: dict[str, list[tuple[GraphOp, bool]]] = {}
    for op in graph.ops:
        for i, v in enumerate(op.inputs):
            main = op.kind == "conv" and i == 0 and v != op.residual
            readers.setdefault(v, []).append((op, main))
    return readers


def _fold_constants(graph: Graph, readers: dict[str, list[tuple[GraphOp, bool]]]) -> dict[str, int]:
    """The forward rewrite; per reader, how many constant channels it folded into its bias."""
    folded: dict[str, int] = {}
    for op in graph.ops:
        if op.kind != "conv" or op.residual is not None:
            continue
        dead = np.flatnonzero(_row_counts(op.conv) == 0)
        if dead.size == 0:
            continue
        value = np.zeros(op.conv.shape[0], dtype=np.float32)
        value[dead] = apply_activation(torch.from_numpy(op.conv.bias[dead].copy()), op.act).numpy()
        for reader, main in readers.get(op.output, []):
            if not main:
                continue
            pointwise = reader.conv.shape[2:] == (1, 1) and reader.conv.padding == 0
            gone = np.zeros(op.conv.shape[0], dtype=bool)
            gone[dead if pointwise else dead[value[dead] == 0]] = True
            if not (gone & _reads(reader.conv)).any():
                continue
            e = _Entries.of(reader.conv)
            hit = gone[e.ci]
            bias = reader.conv.bias.astype(np.float64)
            np.add.at(bias, e.co[hit], e.values[hit].astype(np.float64) * value[e.ci[hit]])
            reader.conv = _rebuilt(reader.conv, e.keep(~hit), bias, *reader.conv.shape[:2])
            folded[reader.name] = folded.get(reader.name, 0) + int(np.unique(e.ci[hit]).size)
    return folded


def _renumber(keep: np.ndarray) -> np.ndarray:
    """Old index -> new index for the kept ones (-1 for the others)."""
    new = np.full(keep.size, -1, dtype=np.int64)
    new[keep] = np.arange(int(keep.sum()))
    return new


def _needed(op: GraphOp, readers: dict[str, list[tuple[GraphOp, bool]]], output: str) -> np.ndarray:
    """Which of ``op``'s output channels some reader uses."""
    need = np.zeros(op.conv.shape[0], dtype=bool)
    for reader, main in readers.get(op.output, []):
        if not main:
            need[:] = True
            break
        need |= _reads(reader.conv)
    if op.output == output or op.output not in readers:
        need[:] = True
    if not need.any():
        need[0] = True
    return need


def _drop_unread(graph: Graph, readers: dict[str, list[tuple[GraphOp, bool]]]) -> dict[str, tuple[int, int]]:
    """The backward rewrite; per producer, its output channels before and after."""
    cut: dict[str, tuple[int, int]] = {}
    for op in reversed(graph.ops):
        if op.kind != "conv" or op.residual is not None:
            continue
        need = _needed(op, readers, graph.output)
        if need.all():
            continue
        new = _renumber(need)
        e = _Entries.of(op.conv)
        e = e.keep(need[e.co])
        e = _Entries(new[e.co], e.ci, e.ky, e.kx, e.values)
        cout = int(need.sum())
        cut[op.name] = (op.conv.shape[0], cout)
        op.conv = _rebuilt(op.conv, e, op.conv.bias[need], cout, op.conv.shape[1])
        op.shape = (cout, *op.shape[1:])
        for reader, _ in readers[op.output]:
            r = _Entries.of(reader.conv)  # every entry reads a needed channel (_needed)
            r = _Entries(r.co, new[r.ci], r.ky, r.kx, r.values)
            reader.conv = _rebuilt(reader.conv, r, reader.conv.bias, reader.conv.shape[0], cout)
            reader.in_shape = (cout, *reader.in_shape[1:])
    return cut


def remove_dead_channels(graph: Graph) -> list[ChannelCut]:
    """Rewrite ``graph`` in place (module docstring); what changed, in graph order."""
    readers = _readers(graph)
    folded = _fold_constants(graph, readers)
    cut = _drop_unread(graph, readers)
    return [ChannelCut(op.name, *cut.get(op.name, (op.shape[0], op.shape[0])), folded.get(op.name, 0))
            for op in graph.ops if op.name in cut or op.name in folded]
