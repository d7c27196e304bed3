"""The native engine for any traced CNN (:mod:`cnnprune.graph`): the same per-layer choice of
sparse kernel, Winograd and dense oneDNN as for the report's ResNet18
(:class:`cnnprune.engine.NativeEngine`, whose calibration, operands and whole-network fallback it
reuses), with the forward pass built from the graph's op list instead of a fixed walk.

Values live where their producer writes them: native ops write padded (C, H+2, W+2, N) buffers
(global pooling an (N, C) array), PyTorch ops tensors. A value is converted once, where a
consumer of the other kind first needs it (``to_nchw`` / ``from_nchw``); padded buffers go back
to the pool after their last reader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from cnnprune.buffers import Arena, BufferPool
from cnnprune.engine import NativeEngine, runs_sparse
from cnnprune.native_plan import (
    FUSED_PANELS_PER_THREAD,
    ONTO_RESIDUAL,
    ConvPlan,
    conv_span_offered,
    gemm_eligible,
    linear_operands,
    span_eligible,
    sparse_linear,
    winograd_eligible,
)
from cnnprune.plan import ACTS, Graph, GraphOp

if TYPE_CHECKING:
    import torch


# torch is imported where a value crosses to or from a PyTorch op, never for a graph whose every
# op is native: the torch-free runtime (cnnprune.runtime) runs this module without it


def nchw_array(buf: np.ndarray) -> np.ndarray:
    """Interior of a padded (C, H+2, W+2, N) buffer as an NCHW array (a copy)."""
    return np.ascontiguousarray(buf[:, 1:-1, 1:-1, :].transpose(3, 0, 1, 2))


def to_nchw(buf: np.ndarray) -> torch.Tensor:
    """Interior of a padded (C, H+2, W+2, N) buffer as an NCHW tensor (a copy)."""
    import torch

    return torch.from_numpy(nchw_array(buf))


def from_nchw(x: torch.Tensor, buf: np.ndarray) -> None:
    buf[:, 1:-1, 1:-1, :] = x.permute(1, 2, 3, 0).numpy()


def _tensor_of(a: np.ndarray, shape: tuple[int, ...] | None = None) -> Callable[[], torch.Tensor]:
    """A getter of ``a`` (reshaped to ``shape``) as a tensor sharing its memory, made when first
    asked for, by a PyTorch op: a plan without any never imports torch."""
    made: list = []

    def get() -> torch.Tensor:
        if not made:
            import torch

            t = torch.from_numpy(a)
            made.append(t.view(*shape) if shape is not None else t)
        return made[0]
    return get


class GraphEngine(NativeEngine):
    """A :class:`Graph` executed by the C kernels between PyTorch ops; logits for (N, *input_shape)."""

    def __init__(self, graph: Graph, threads: int, **kwargs) -> None:
        super().__init__(None, threads, **kwargs)
        self.graph = graph
        self.input_shape = graph.input_shape
        self.gemm = kwargs.get("layer_mode") in (None, "gemm")
        self._linear: dict[str, tuple] = {}  # linear layers' CSR weights (``linear_csr``)
        for op in graph.ops:
            if op.kind == "conv":
                op.conv = op.conv.compact()

    def linear_csr(self, conv, n: int) -> tuple | None:
        """A linear layer's weight in CSR where it runs so at batch ``n`` (``sparse_linear``), made
        once for every batch size's program."""
        if not sparse_linear(conv.weight, n):
            return None
        if conv.name not in self._linear:
            self._linear[conv.name] = linear_operands(conv.weight)
        return self._linear[conv.name]

    def held_weight_bytes(self) -> int:
        """Folded weights as kept between plans and the operands of every planned batch size."""
        return sum(op.conv.weight_bytes() for op in self.graph.ops if op.conv is not None) + self._operand_bytes() + \
            sum(a.nbytes for csr in self._linear.values() for a in csr)

    def _layer_plans(self, n: int) -> dict[str, ConvPlan]:
        from cnnprune.kernels import direct_stride2

        plans: dict[str, ConvPlan] = {}
        onto = overwritable_residuals(self.graph) if ONTO_RESIDUAL else set()
        for op in self.graph.ops:
            if op.kind != "conv":
                continue
            _, hin, win = op.in_shape
            _, ho, wo = op.shape
            p = ConvPlan(op.conv, hin, win, ho, wo, bias=op.conv.bias, span=span_eligible(op.conv, hin, win),
                         dense_ok=not op.grouped and op.border == 1, border=op.border, residual=op.residual is not None,
                         onto=op.output in onto)
            p.gemm_ok = self.gemm and not op.grouped and op.border == 1 and gemm_eligible(op.conv, hin, win)
            p.direct = not p.span and direct_stride2(op.conv.stride, n)
            p.conv_span = conv_span_offered(p, n, self.lib.vector_width())
            p.winograd_ok = self.winograd and not op.grouped and \
                winograd_eligible(op.conv, hin, win)
            if p.winograd_ok:
                p.fused = self.lib.winograd_panels(hin, win, n) >= FUSED_PANELS_PER_THREAD * self.threads
            plans[op.output] = p
        return plans

    def _program(self, n: int) -> dict:
        plan = self._plan(n)
        if "program" not in plan and runs_sparse(plan):
            _Program(self, plan, n).build()
            self._finish(n, plan)
        return plan

    def _run_sparse(self, x: np.ndarray) -> np.ndarray:
        prog = self._plans[x.shape[0]]
        prog["xbuf"][...] = x
        for part in prog["program"]:
            part()
        return np.array(prog["output"](), dtype=np.float32)  # a copy: the buffers are the next call's

    def plan_summary(self, batch_size: int = 1) -> list[dict]:
        """Per op of the graph, in order: its name, kind, where it runs at this batch size
        (``sparse``, ``winograd`` or ``dense`` for native convolutions, ``native`` for pooling,
        ``pytorch``; the dense engine's name, e.g. ``onnxruntime``, for every op where the whole
        network falls back), why it is not native, the nodes fused into it, and its output channels
        where dead ones were taken out (``"96 -> 13"``, :mod:`cnnprune.channels`)."""
        plan = self._program(batch_size)
        whole = plan["engine"]
        cuts = {c.op: c for c in self.graph.cuts if c.after < c.before}
        rows = []
        for op in self.graph.ops:
            where = "pytorch" if op.kind == "torch" else plan["convs"][op.output].mode if op.kind == "conv" else "native"
            cut = cuts.get(op.name)
            rows.append({"op": op.name, "kind": op.kind, "runs": where if whole == "sparse" else whole,
                         "why": op.why, "fused": ", ".join(op.fused),
                         "channels": f"{cut.before} -> {cut.after}" if cut else ""})
        return rows


def last_reads(graph: Graph) -> dict[str, int]:
    """Each value's last reader (index into ``graph.ops``); the output's is past the end."""
    last: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for v in op.inputs:
            last[v] = i
    last[graph.output] = len(graph.ops)
    return last


def overwritable_residuals(graph: Graph) -> set[str]:
    """The convolutions (by output) that can write their output over their residual's buffer
    (``step_t`` in csrc/kernels.h), which saves a stream the output's size to and from memory:
    each is the residual's last reader, does not also read it as its input, and the residual
    has the output's shape; never the graph's input, whose buffer may have a wider border (a
    residual is read through a one-pixel-border copy of it)."""
    last = last_reads(graph)
    shapes = {op.output: op.shape for op in graph.ops}
    return {op.output for i, op in enumerate(graph.ops)
            if op.kind == "conv" and op.residual is not None and last[op.residual] == i
            and op.inputs[0] != op.residual and shapes.get(op.residual) == op.shape}


class _Program:
    """The forward pass of one batch size: buffers, conversions and steps (``GraphEngine._program``)."""

    def __init__(self, engine: GraphEngine, plan: dict, n: int) -> None:
        self.e, self.plan, self.n = engine, plan, n
        self.arena = Arena()
        self.pool = BufferPool(self.arena)
        self.items: list = []
        self.keep: list = []
        self.pads: dict[str, np.ndarray] = {}
        self.tensors: dict[str, Callable[[], torch.Tensor]] = {}  # value -> how to get it as a tensor
        self.rt: dict[str, object] = {}  # values PyTorch ops make, per call
        self.flat: dict[str, np.ndarray] = {}  # a global average pool's (N, C) output
        self.shapes = {op.output: op.shape for op in engine.graph.ops}
        self.last = last_reads(engine.graph)

    def padded(self, v: str, border: int = 1) -> np.ndarray:
        """``v`` in the padded layout with a zero border of ``border`` pixels: its buffer
        (converted from its tensor where it has none yet), or a copy with that border, made now
        for one reader (the caller gives it back to the pool after that reader: ``_conv``)."""
        from cnnprune.kernels import REPAD, Step

        buf = self._padded(v)
        c, h, w = self.shapes.get(v, self.e.input_shape)
        have = (buf.shape[1] - h) // 2  # the border it was made with
        if border == have:
            return buf
        wide = self.pool.padded(c, h, w, self.n, border)
        self.items.append(Step(kind=REPAD, src=buf.ctypes.data, C=c, H=h, W=w, N=self.n, k=have, pad=border,
                               dst=wide.ctypes.data))
        self.keep += [buf, wide]
        return wide

    def _padded(self, v: str) -> np.ndarray:
        if v in self.pads:
            return self.pads[v]
        from cnnprune.kernels import PACK, Step

        c, h, w = self.shapes.get(v, self.e.input_shape)
        border = self.e.graph.input_border if v == self.e.graph.input else 1
        buf = self.pads[v] = self.pool.padded(c, h, w, self.n, border)
        if v == self.e.graph.input:
            x = self.plan["xbuf"]
            self.items.append(Step(kind=PACK, src=x.ctypes.data, N=self.n, C=c, H=h, W=w, pad=border,
                                   dst=buf.ctypes.data))
        elif v in self.flat:  # a global pool's (N, C), read as a 1x1 map (a squeeze-and-excitation gate)
            flat, interior = self.flat[v], buf[:, 1, 1, :]
            self.items.append(lambda: np.copyto(interior, flat.T))
        else:
            get = self.tensor(v)
            self.items.append(lambda: from_nchw(get(), buf))
        return buf

    def tensor(self, v: str) -> Callable[[], torch.Tensor]:
        """A getter of ``v`` as a tensor (NCHW), converting from its padded buffer where needed."""
        if v in self.tensors:
            return self.tensors[v]
        if v in self.pads:
            buf, rt = self.pads[v], self.rt
            self.items.append(lambda: rt.__setitem__(v, to_nchw(buf)))
        self.tensors[v] = lambda rt=self.rt: rt[v]
        return self.tensors[v]

    def build(self) -> None:
        xbuf = self.plan["xbuf"] = self.arena.zeros((self.n, *self.e.input_shape))
        self.tensors[self.e.graph.input] = _tensor_of(xbuf)
        self.keep.append(xbuf)
        convs = self.plan["convs"]
        sizes = [self.e._scratch_floats(p, self.n) for p in convs.values() if p.mode == "winograd" and not p.fused]
        self.scratch = self.arena.zeros((max(sizes),)) if sizes else None
        self.keep.append(self.scratch)
        ops, fused = self.e.graph.ops, -1
        for i, op in enumerate(ops):
            if i == fused:  # a max pool run with the convolution before it
                continue
            if op.kind == "conv" and self._pools_alone(i):
                self._conv_pool(op, ops[i + 1])
                fused = i + 1
            else:
                getattr(self, f"_{op.kind}")(op)
            for v in op.inputs:
                if self.last.get(v) == i and v in self.pads:
                    self.pool.give(self.pads[v])
        self.plan["output"] = self._output()
        self.plan["program"] = self.e._group(self.items, self.keep)

    def _output(self) -> Callable[[], object]:
        v = self.e.graph.output
        if v in self.flat:  # a pool's or a linear layer's (N, C) array
            flat, shape = self.flat[v], (self.n, *self.shapes[v])
            return lambda: flat.reshape(shape)
        if v in self.tensors or v not in self.pads:
            get = self.tensor(v)
            return lambda: get().detach().numpy()
        buf = self.pads[v]
        return lambda: nchw_array(buf)

    def _conv(self, op: GraphOp) -> None:
        p = self.plan["convs"][op.output]
        src = self.padded(op.inputs[0], op.border)
        copy = src if src is not self.pads.get(op.inputs[0]) else None  # a wider-bordered copy for this conv only
        res = self.padded(op.residual) if op.residual is not None else None
        c, h, w = op.shape
        if p.onto:  # the residual's buffer is now the output's: build() must not give it back to the pool
            dst = self.pads[op.output] = self.pads.pop(op.residual)
        else:
            dst = self.pads[op.output] = self.pool.padded(c, h, w, self.n)
        relu = ACTS[op.act]
        self.keep += [src, res, dst]
        if p.mode == "dense":
            self.items.append(self.e.dense_conv(p, src, dst, res, relu))
            self.pool.give(copy)
            return
        phase = None
        if p.mode in ("sparse", "gemm") and p.conv.stride == 2 and not p.direct:  # see NativeEngine._phase
            cin = p.conv.shape[1]
            phase = self.pool.padded(cin, p.ho, p.wo, self.n) if p.span else self._phase_planes(p)
            self.keep.append(phase)
        self.items.extend(self.e._conv_steps(p, p.mode, src, dst, res, relu, phase, self.scratch))
        self.pool.give(phase, copy)

    def _phase_planes(self, p: ConvPlan) -> np.ndarray:
        """The 4 phase planes that a stride-2 convolution not reading its input directly reads."""
        return self.pool.phase(p.phase_shape(self.n))

    def _pools_alone(self, i: int) -> bool:
        """Whether conv op ``i`` and the max pool after it, its output's only reader, run as one
        step (``kernels.conv_pool_step``): a sparse row-tiled convolution with ReLU and no residual
        whose even map is never stored (a 224-pixel ResNet's stem: 64 planes of 112x112, 53 MB
        at batch 16, written and read back once each otherwise)."""
        ops = self.e.graph.ops
        op, p = ops[i], self.plan["convs"][ops[i].output]
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        return (nxt is not None and nxt.kind == "maxpool" and nxt.inputs == [op.output] and self.last.get(op.output) == i + 1
                and p.mode == "sparse" and not p.span and p.span_tile is None and op.residual is None and op.act == "relu"
                and p.ho % 2 == 0 and p.wo % 2 == 0)

    def _conv_pool(self, op: GraphOp, pool_op: GraphOp) -> None:
        from cnnprune.kernels import conv_pool_step, split_step

        p = self.plan["convs"][op.output]
        src = self.padded(op.inputs[0], op.border)
        copy = src if src is not self.pads.get(op.inputs[0]) else None
        c, h, w = pool_op.shape
        dst = self.pads[pool_op.output] = self.pool.padded(c, h, w, self.n)
        phase = None
        if p.conv.stride == 2 and not p.direct:
            phase = self._phase_planes(p)
            self.items.append(split_step(src, phase))
        base = phase if phase is not None else src
        self.items.append(conv_pool_step(base, p.ho, p.wo, p.conv.shape[0], p.ngroups, p.ptr, p.chan, p.off, p.val,
                                         p.bias, dst, p.geometry, p.direct))
        self.keep += [src, phase, dst]
        self.pool.give(phase, copy)

    def _maxpool(self, op: GraphOp) -> None:
        from cnnprune.kernels import MAXPOOL, Step

        src = self.padded(op.inputs[0])
        c, h, w = op.shape
        dst = self.pads[op.output] = self.pool.padded(c, h, w, self.n)
        self.items.append(Step(kind=MAXPOOL, src=src.ctypes.data, C=c, H=src.shape[1] - 2, W=src.shape[2] - 2, N=self.n,
                               dst=dst.ctypes.data))
        self.keep += [src, dst]

    def _scale(self, op: GraphOp) -> None:
        from cnnprune.kernels import SCALE, Step

        src = self.padded(op.inputs[0])
        c, h, w = op.shape
        n = self.n
        if op.inputs[1] in self.pads:  # a native (C, 1, 1) map: its interior pixel, 9N floats a channel
            factors = self.pads[op.inputs[1]]
            at, per_image, per_channel = factors.ctypes.data + 4 * n * factors.itemsize, 1, 9 * n
        elif op.inputs[1] in self.flat:  # a global pool's (N, C), read in place
            factors = self.flat[op.inputs[1]]
            at, per_image, per_channel = factors.ctypes.data, c, 1
        else:  # PyTorch's (N, C, 1, 1), copied per call
            get, factors = self.tensor(op.inputs[1]), self.arena.zeros((n, c))
            view = _tensor_of(factors)
            self.items.append(lambda: view().copy_(get().reshape(-1, c).expand(n, c)))
            at, per_image, per_channel = factors.ctypes.data, c, 1
        dst = self.pads[op.output] = self.pool.padded(c, h, w, n)
        self.items.append(Step(kind=SCALE, src=src.ctypes.data, C=c, H=h, W=w, N=n, val=at, stride=per_image,
                               src_row=per_channel, dst=dst.ctypes.data))
        self.keep += [src, dst, factors]

    def _avgpool(self, op: GraphOp) -> None:
        from cnnprune.kernels import AVGPOOL, Step

        src = self.padded(op.inputs[0])
        flat = self.arena.zeros((self.n, src.shape[0]))
        self.items.append(Step(kind=AVGPOOL, src=src.ctypes.data, C=src.shape[0], H=src.shape[1] - 2,
                               W=src.shape[2] - 2, N=self.n, dst=flat.ctypes.data))
        self.tensors[op.output] = _tensor_of(flat, (self.n, *op.shape))
        self.flat[op.output] = flat
        self.keep += [src, flat]

    def _linear(self, op: GraphOp) -> None:
        from cnnprune.kernels import linear_step

        src, w, b = self.flat[op.inputs[0]], op.conv.weight, op.conv.bias
        dst = self.arena.zeros((self.n, w.shape[0]))
        csr = self.e.linear_csr(op.conv, self.n)
        self.items.append(linear_step(src, w, b, dst, ACTS[op.act], csr))
        self.tensors[op.output] = _tensor_of(dst)
        self.flat[op.output] = dst
        self.keep += [src, dst, w, b, csr]

    def _torch(self, op: GraphOp) -> None:
        getters = [self.tensor(v) for v in op.inputs]
        rt, fn, out = self.rt, op.fn, op.output
        self.items.append(lambda: rt.__setitem__(out, fn(*(g() for g in getters))))
        self.tensors[out] = lambda: rt[out]
