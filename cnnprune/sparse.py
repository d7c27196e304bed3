"""Sparse inference for the pruned ResNet18: ``cnnprune.sparse.load(path) -> nn.Module``.

Engines that run a ``.csr.pt`` file (or any permanent checkpoint):

- ``native`` (CPU, the fast path): BatchNorm folded into the convolutions, every
  convolution a sparse *direct* convolution in C (``csrc/sparse_conv.c``) over activations
  in a padded (C, H+2, W+2, N) layout: each nonzero weight is one vectorised multiply-add over
  a contiguous run of an input row, with no im2col (the spatially-vectorised sparse × dense
  scheme of XNNPACK's "Fast Sparse ConvNets"); stride-2 convolutions read 4 phase planes.
  Each output channel's nonzeros are cut into input-channel groups (``_group_size``) so that
  what a register tile reads stays in L1 while the whole output-channel chunk uses it, and
  into segments by kernel column and row, so that a tile skips the taps that read only the
  zero border (most of layer4's at 2x2 maps); offsets are 16-bit where they fit
  (``_sparse_operands``).
  Global pruning leaves the early layers dense (layer1 keeps ~57 % of its weights at 90 %
  global sparsity), and there a kernel doing one multiply-add per nonzero does more work than
  Winograd F(4x4, 3x3) (``csrc/winograd.c``: 36 products per 4x4 tile and channel pair, the
  equivalent of 75 % sparsity, as dense GEMMs near the FMA peak), so 3x3 stride-1 layers may
  also run that way. It is a dense algorithm: what it gains is not pruning's, and the report
  shows the same engine on the unpruned model beside the pruned ones to keep the two apart.
  Per layer and per batch size it times the sparse kernel, Winograd (where the shape allows)
  and PyTorch's dense convolution (oneDNN) on the same shape, once, and keeps the fastest
  (``layer_choice``); unless the whole network beats dense onnxruntime at that batch size by
  at least 5 % (lightly pruned models), it runs onnxruntime instead (``engine_for``), so it
  is never slower than dense.
  Threads: ``threads`` (default: torch's), used by the kernels and the fallback alike.
- ``torch-csr``: the naive reference, ``torch.sparse`` CSR × unfolded input (cuSPARSE on
  CUDA), for the comparison and for GPUs; ``torch-2:4`` and ``torch-gemm`` run the same
  im2col path with 2:4 semi-structured (sparse tensor cores) or dense weights
  (``TorchGemmResNet``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnprune import csr
from cnnprune.buffers import Arena
from cnnprune.errors import CnnpruneError
from cnnprune.model import build_model, check_state_dict, load_state_dict

BN_EPS = 1e-5
ENGINES = ("native", "torch-csr", "torch-2:4", "torch-gemm")


@dataclass
class FoldedConv:
    """A convolution with its BatchNorm folded in: y = conv(x, weight) + bias. ``weight`` is
    dense (Cout, Cin, k, k) float32, or, after ``compact()``, the (Cout, Cin·k·k) matrix in CSR
    with int32 indices (8 bytes per nonzero): how the native engine keeps it between plans."""

    name: str
    weight: torch.Tensor
    bias: torch.Tensor  # (Cout,)
    stride: int
    padding: int
    shape: tuple[int, int, int, int] = ()

    def __post_init__(self) -> None:
        if not self.shape:
            self.shape = tuple(self.weight.shape)

    def dense(self) -> torch.Tensor:
        if self.weight.layout == torch.strided:
            return self.weight
        return self.weight.to_dense().view(self.shape)

    def compact(self) -> FoldedConv:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta": storage only here
            m = self.dense().reshape(self.shape[0], -1).to_sparse_csr()
            csr = torch.sparse_csr_tensor(m.crow_indices().int(), m.col_indices().int(), m.values(), m.shape,
                                          check_invariants=False)
        return FoldedConv(self.name, csr, self.bias, self.stride, self.padding, self.shape)

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel() if self.weight.layout == torch.sparse_csr
                   else torch.count_nonzero(self.weight))

    @property
    def density(self) -> float:
        return self.nnz / float(np.prod(self.shape))

    def weight_bytes(self) -> int:
        """Bytes of the weight as held (dense, or CSR values and indices) and the bias."""
        w = self.weight
        held = [w] if w.layout == torch.strided else [w.values(), w.crow_indices(), w.col_indices()]
        return sum(t.numel() * t.element_size() for t in held + [self.bias])


def fold_bn(state: dict[str, torch.Tensor], conv: str, bn: str, stride: int, padding: int) -> FoldedConv:
    """w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε): exact zeros stay zeros, so sparsity is kept."""
    scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + BN_EPS)
    weight = state[f"{conv}.weight"] * scale.view(-1, 1, 1, 1)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    return FoldedConv(conv, weight.contiguous(), bias.contiguous(), stride, padding)


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
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor

    def convs(self) -> list[FoldedConv]:
        out = [self.stem]
        for b in self.blocks:
            out += [b.conv1, b.conv2] + ([b.downsample] if b.downsample else [])
        return out


def _compact_net(net: FoldedResNet) -> FoldedResNet:
    """The same network with every convolution's weight in CSR (``FoldedConv.compact``)."""
    blocks = [Block(b.conv1.compact(), b.conv2.compact(), b.downsample.compact() if b.downsample else None)
              for b in net.blocks]
    return FoldedResNet(net.stem.compact(), blocks, net.fc_weight, net.fc_bias)


def fold_resnet(state: dict[str, torch.Tensor]) -> FoldedResNet:
    blocks = []
    for layer in range(1, 5):
        for index in range(2):
            p = f"layer{layer}.{index}"
            stride = 2 if layer > 1 and index == 0 else 1
            ds = fold_bn(state, f"{p}.downsample.0", f"{p}.downsample.1", stride, 0) \
                if f"{p}.downsample.0.weight" in state else None
            blocks.append(Block(fold_bn(state, f"{p}.conv1", f"{p}.bn1", stride, 1),
                                fold_bn(state, f"{p}.conv2", f"{p}.bn2", 1, 1), ds))
    return FoldedResNet(fold_bn(state, "conv1", "bn1", 1, 1), blocks,
                        state["fc.weight"].contiguous(), state["fc.bias"].contiguous())


# ------------------------------------------------------------------ native CPU engine


MODES = ("sparse", "winograd", "dense")
# Winograd layers with at least this many GEMM panels per thread run fused (``csrc/winograd.c``):
# transformed input kept in each thread's cache; 2-8 % faster over the network at batch 32
# (75 and 90 %, same-process A/B); with fewer panels the two-step variant spreads the work better.
FUSED_PANELS_PER_THREAD = 2


@dataclass
class _ConvPlan:
    """One convolution at one batch size: its operands for each way the engine can run it,
    the calibration timings (ms, ``nan`` where not timed) and the chosen ``mode``."""

    conv: FoldedConv
    hin: int
    win: int
    ho: int
    wo: int
    mode: str = "sparse"
    ptr: np.ndarray | None = None
    chan: np.ndarray | None = None
    ngroups: int = 1
    off: np.ndarray | None = None
    val: np.ndarray | None = None
    bias: np.ndarray | None = None
    u: np.ndarray | None = None
    fused: bool = False
    dense_weight: torch.Tensor | None = None
    ms: dict[str, float] = field(default_factory=dict)

    @property
    def geometry(self) -> tuple[int, int, int, int, int]:
        """Kernel size, stride, padding, input height and width: what the sparse kernel needs to
        skip the taps that read only the zero border."""
        return self.conv.shape[2], self.conv.stride, self.conv.padding, self.hin, self.win

    def release(self) -> None:
        """Drop the operands of the modes not chosen (what the plan holds is what it runs)."""
        if self.mode != "sparse":
            self.ptr = self.chan = self.off = self.val = None
        if self.mode != "winograd":
            self.u = None
        if self.mode != "dense":
            self.dense_weight = None


def winograd_eligible(conv: FoldedConv, hin: int, win: int, min_channels: int = 16) -> bool:
    """F(4x4, 3x3) covers 3x3 stride-1 padding-1 convolutions whose maps tile by 4 (layers 1-3
    of the CIFAR ResNet18 with maxpool: 16, 8 and 4 pixels; layer4's 2x2 maps do not) and at
    least ``min_channels`` input channels: the stem's 3 make GEMMs of depth 3, where the
    transforms cost more than the products they save."""
    cout, cin, kh, kw = conv.shape
    return ((kh, kw) == (3, 3) and conv.stride == 1 and conv.padding == 1 and hin % 4 == 0 and win % 4 == 0
            and cin >= min_channels and cout % 4 == 0)


_WG_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def _winograd_weights(conv: FoldedConv) -> np.ndarray:
    """U = G g G^T of every (output, input) channel pair, computed in float64 and packed as
    ``csrc/winograd.c`` reads it: [36 transform points][Cout/4][Cin][4 output channels]."""
    w = conv.dense().double().numpy()
    cout, cin = w.shape[:2]
    if cout % 4:
        raise CnnpruneError(f"layer {conv.name}: Winograd needs a multiple of 4 output channels, got {cout}")
    u = np.einsum("ik,ockl,jl->ocij", _WG_G, w, _WG_G).reshape(cout // 4, 4, cin, 36)
    return np.ascontiguousarray(u.transpose(3, 0, 2, 1), dtype=np.float32)


def _sparse_operands(conv: FoldedConv, hin: int, win: int, n: int, group: int, narrow: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """The folded weight as the kernel reads it (``csrc/sparse_conv.c``): nonzeros ordered by
    (group of ``group`` input channels, output channel, kernel column, kernel row): a tile
    streams one group's runs channel after channel. ``ptr``: the start of each such segment
    (k*k per run: the kernel skips the taps that read only the zero border); ``chan``: the
    nonzeros before each output channel (how work is cut into equal shares); each nonzero's
    input offset (in pixels of ``n`` floats) and value. Offsets are uint16 where they all fit
    (``narrow``: every layer of the CIFAR ResNet18, any batch), else int32: the nonzeros are
    streamed from memory in every pass, for only 4-16 multiply-adds each at batch 1, so 6
    instead of 8 bytes per nonzero is time saved."""
    w = conv.dense().numpy()
    cout, cin, kh, kw = w.shape
    co, ci, ky, kx = np.nonzero(w)
    ngroups = -(-cin // group)
    segment = (((ci // group) * cout + co) * kw + kx) * kh + ky
    order = np.argsort(segment, kind="stable")
    co, ci, ky, kx = co[order], ci[order], ky[order], kx[order]
    ptr = np.zeros(cout * ngroups * kh * kw + 1, dtype=np.int32)
    ptr[1:] = np.cumsum(np.bincount(segment, minlength=cout * ngroups * kh * kw))
    chan = np.zeros(cout + 1, dtype=np.int32)
    chan[1:] = np.cumsum(np.bincount(co, minlength=cout))
    oy, ox = ky - conv.padding + 1, kx - conv.padding + 1
    if conv.stride == 1:
        row = (win + 2) * n
        off = ci.astype(np.int64) * (hin + 2) * row + oy * row + ox * n
    else:
        hh, wh = (hin + 2) // 2, (win + 2) // 2
        row = wh * n
        plane = ((oy % 2) * 2 + (ox % 2)) * cin + ci
        off = plane.astype(np.int64) * hh * row + (oy // 2) * row + (ox // 2) * n
    off //= n  # every offset is a whole pixel: the kernel multiplies by the batch
    top = int(off.max()) if off.size else 0
    if top >= 2**31:
        raise CnnpruneError(f"batch {n} is too large for the native sparse engine's 32-bit offsets; use a smaller batch")
    narrow = narrow and top < 2**16
    return ptr, chan, ngroups, off.astype(np.uint16 if narrow else np.int32), \
        np.ascontiguousarray(w[co, ci, ky, kx], dtype=np.float32)


def _group_size(lib, conv: FoldedConv, row_floats: int, ho: int, n: int, min_run: int = 32) -> int:
    """Input channels per group: the L1-sized group of the kernel, widened in very sparse layers
    until an output channel has about ``min_run`` nonzeros per group on average, since each
    (channel, group) pass reloads and stores its accumulators."""
    cout, cin, k, _ = conv.shape
    nnz = max(conv.nnz, 1)
    l1 = lib.channels_per_group(row_floats, ho, n, conv.stride, k, cin)
    return min(cin, max(l1, -(-min_run * cout * cin // nnz)))


class _BufferPool:
    """Activation buffers of one forward pass, handed out again once their last reader has run
    (the steps run in program order): at batch 32 a buffer per layer output made ~35 MB of
    activations, beside the weights, on a 32 MB L3 cache; reused, they are ~15 MB (measured
    1.02x for the whole network at 90 %, batch 32). Padded buffers are only reused as padded
    buffers of the same shape, whose writers touch interiors only, so their borders stay zero;
    phase planes are rewritten whole by each split."""

    def __init__(self, arena: Arena, reuse: bool = True) -> None:
        self.arena = arena
        self.reuse = reuse
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._key: dict[int, tuple] = {}

    def _take(self, key: tuple) -> np.ndarray:
        free = self._free.get(key)
        buf = free.pop() if free and self.reuse else self.arena.zeros(key[1])
        self._key[id(buf)] = key
        return buf

    def padded(self, c: int, h: int, w: int, n: int) -> np.ndarray:
        return self._take(("padded", (c, h + 2, w + 2, n)))

    def phase(self, c: int, hh: int, wh: int, n: int) -> np.ndarray:
        """The 4 phase planes (4c, hh, wh, n) a stride-2 convolution reads."""
        return self._take(("phase", (4 * c, hh, wh, n)))

    def give(self, *buffers: np.ndarray | None) -> None:
        """Return buffers whose last reader is already in the program (repeats and None ignored)."""
        for b in buffers:
            key = self._key.pop(id(b), None) if b is not None else None
            if key is not None:
                self._free.setdefault(key, []).append(b)


def _padded(c: int, h: int, w: int, n: int, arena: Arena | None = None) -> np.ndarray:
    shape = (c, h + 2, w + 2, n)
    return arena.zeros(shape) if arena is not None else np.zeros(shape, dtype=np.float32)


def _to_nchw(buf: np.ndarray) -> torch.Tensor:
    """Interior of a padded (C, H+2, W+2, N) buffer as an NCHW tensor (a copy)."""
    return torch.from_numpy(buf[:, 1:-1, 1:-1, :]).permute(3, 0, 1, 2).contiguous()


def _from_nchw(x: torch.Tensor, buf: np.ndarray) -> None:
    buf[:, 1:-1, 1:-1, :] = x.permute(1, 2, 3, 0).numpy()


class NativeSparseResNet(nn.Module):
    """The folded network executed by the C kernels; see the module docstring."""

    def __init__(self, net: FoldedResNet, threads: int | None = None, calibrate: bool = True,
                 dense_fallback: nn.Module | None = None, winograd: bool = True, layer_mode: str | None = None) -> None:
        super().__init__()
        from cnnprune.kernels import library

        if layer_mode not in (None, "sparse", "winograd"):
            raise CnnpruneError(f"layer_mode {layer_mode!r} is unknown; choose 'sparse', 'winograd' or None (timed per layer)")
        self.lib = library()
        self.net = _compact_net(net)
        self.winograd = winograd or layer_mode == "winograd"
        self.layer_mode = layer_mode
        self._fallback = _ort_session(dense_fallback, threads or torch.get_num_threads()) \
            if dense_fallback is not None and calibrate else None
        self.threads = threads or torch.get_num_threads()
        self.calibrate = calibrate
        self._plans: dict[int, dict] = {}
        self._u: dict[str, np.ndarray] = {}
        self.eval()

    def held_weight_bytes(self) -> int:
        """Bytes of weights this module holds now: the folded weights as kept between plans
        (CSR), biases, fc, and per planned batch size the operands of the chosen modes (sparse
        offsets and values, Winograd's transformed weights, dense weights of dense layers)."""
        arrays: dict[int, int] = {}
        for plan in self._plans.values():
            for p in plan["convs"].values():
                for a in (p.ptr, p.chan, p.off, p.val, p.bias, p.u):
                    if a is not None:
                        arrays[a.ctypes.data] = a.nbytes
                if p.dense_weight is not None:
                    arrays[p.dense_weight.data_ptr()] = p.dense_weight.numel() * 4
        net = self.net
        return (sum(c.weight_bytes() for c in net.convs()) + (net.fc_weight.numel() + net.fc_bias.numel()) * 4
                + sum(arrays.values()))

    def _winograd_u(self, conv: FoldedConv) -> np.ndarray:
        """Transformed weights of a layer, computed once for every batch size that uses them."""
        if conv.name not in self._u:
            self._u[conv.name] = _winograd_weights(conv)
        return self._u[conv.name]

    # -- planning
    def _plan(self, n: int) -> dict:
        if n in self._plans:
            return self._plans[n]
        plans: dict[str, _ConvPlan] = {}

        def add(conv: FoldedConv, hin: int, win: int) -> tuple[int, int]:
            ho, wo = (hin + 2 * conv.padding - conv.shape[2]) // conv.stride + 1, \
                     (win + 2 * conv.padding - conv.shape[3]) // conv.stride + 1
            p = _ConvPlan(conv, hin, win, ho, wo)
            group = _group_size(self.lib, conv, wo * n, ho, n)
            p.ptr, p.chan, p.ngroups, p.off, p.val = _sparse_operands(conv, hin, win, n, group)
            p.bias = conv.bias.numpy().astype(np.float32)
            if self.winograd and winograd_eligible(conv, hin, win):
                p.u = self._winograd_u(conv)
                p.fused = self.lib.winograd_panels(hin, win, n) >= FUSED_PANELS_PER_THREAD * self.threads
            plans[conv.name] = p
            return ho, wo

        h, w = add(self.net.stem, 32, 32)
        h, w = h // 2, w // 2
        for b in self.net.blocks:
            if b.downsample is not None:
                add(b.downsample, h, w)
            h2, w2 = add(b.conv1, h, w)
            add(b.conv2, h2, w2)
            h, w = h2, w2
        plan = {"convs": plans, "final_hw": (h, w)}
        self._plans[n] = plan
        if self.layer_mode is not None:
            for p in plans.values():
                p.mode = "winograd" if self.layer_mode == "winograd" and p.u is not None else "sparse"
        elif self.calibrate:
            self._choose_layers(n, plan)
        for p in plans.values():
            p.release()
        used = {p.conv.name for q in self._plans.values() for p in q["convs"].values() if p.mode == "winograd"}
        self._u = {k: v for k, v in self._u.items() if k in used}
        return plan

    def _choose_layers(self, n: int, plan: dict, repeats: int = 5) -> None:
        """Per layer, time each way it can run on this batch size (sparse kernel, Winograd where
        the shape allows, PyTorch's dense oneDNN convolution incl. layout conversion), best of
        ``repeats``, and keep the fastest."""
        for p in plan["convs"].values():
            cout, cin = p.conv.shape[:2]
            arena = Arena()  # as the forward pass allocates (huge pages), freed after this layer
            src = _padded(cin, p.hin, p.win, n, arena)
            src[:, 1:-1, 1:-1, :] = np.random.default_rng(0).random((cin, p.hin, p.win, n), dtype=np.float32)
            dst = _padded(cout, p.ho, p.wo, n, arena)
            phase = arena.zeros((4 * cin, (p.hin + 2) // 2, (p.win + 2) // 2, n)) if p.conv.stride == 2 else None
            scratch = arena.zeros((self._scratch_floats(p, n),)) if p.u is not None and not p.fused else None
            p.dense_weight = p.conv.dense()
            runs = {"sparse": self._native(self._conv_steps(p, "sparse", src, dst, None, True, phase, None), []),
                    "dense": lambda: self._dense_conv(p, src, dst, None, True)}
            if p.u is not None:
                runs["winograd"] = self._native(self._conv_steps(p, "winograd", src, dst, None, True, None, scratch), [])
            p.ms = {mode: _best_ms(fn, repeats) for mode, fn in runs.items()}
            p.mode = min(p.ms, key=p.ms.get)
            del runs, src, dst, phase, scratch

    def _scratch_floats(self, p: _ConvPlan, n: int) -> int:
        """Size of a Winograd layer's transformed input (floats); the layers share one buffer."""
        return int(self.lib.winograd_scratch_floats(p.conv.shape[1], p.hin, p.win, n))

    def _choose_engine(self, n: int, plan: dict, rounds: int = 1, margin: float = 0.05) -> None:
        """Whole network: keep the sparse program only if it beats dense onnxruntime at this batch
        by at least ``margin`` (fraction): this decision is what keeps lightly pruned models from
        running slower than dense, so a near tie, which the next minutes of a noisy machine may
        turn either way, goes to dense. Medians over blocks in A B B A order (``_paired_ms``)."""
        plan["engine"] = "sparse"
        if self._fallback is None:
            return
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        xn = x.numpy()
        plan["sparse_ms"], plan["dense_ms"] = _paired_ms(lambda: self._run_sparse(x),
                                                         lambda: self._fallback.run(None, {"input": xn}), rounds)
        if plan["sparse_ms"] > (1 - margin) * plan["dense_ms"]:
            plan["engine"] = "onnxruntime"

    def engine_for(self, batch_size: int) -> dict:
        """What runs at this batch size ("sparse" or the "onnxruntime" dense fallback) and the timings (ms)."""
        plan = self._program(batch_size)
        return {"engine": plan["engine"], "sparse_ms": plan.get("sparse_ms"), "dense_ms": plan.get("dense_ms")}

    def layer_choice(self, batch_size: int) -> dict[str, dict]:
        """Per layer: how it runs at this batch size ("sparse", "winograd" or "dense"), its
        density (fraction 0-1 of nonzero weights) and the calibration timings (ms) of each
        mode tried (``sparse_ms``, ``winograd_ms``, ``dense_ms``; nan where not timed)."""
        plan = self._plan(batch_size)
        return {name: {"engine": p.mode, "density": p.conv.density,
                       **{f"{mode}_ms": p.ms.get(mode, float("nan")) for mode in MODES}}
                for name, p in plan["convs"].items()}

    # -- execution
    def _dense_conv(self, p: _ConvPlan, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None,
                    relu: bool) -> None:
        """One convolution in PyTorch (oneDNN) on this engine's thread count, layout conversion included."""
        previous = torch.get_num_threads()
        if previous != self.threads:
            torch.set_num_threads(self.threads)
        try:
            x = _to_nchw(src)
            y = F.conv2d(x, p.dense_weight, p.conv.bias, stride=p.conv.stride, padding=p.conv.padding)
            if res is not None:
                y += _to_nchw(res)
            if relu:
                y.relu_()
            _from_nchw(y, dst)
        finally:
            if previous != self.threads:
                torch.set_num_threads(previous)

    def _conv_steps(self, p: _ConvPlan, mode: str, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None,
                    relu: bool, phase: np.ndarray | None, scratch: np.ndarray | None, split: bool = True) -> list:
        """One convolution as native steps, sparse or Winograd (raw addresses: the plan keeps
        the arrays). Sparse stride 2 reads phase planes, made here unless ``split`` is False
        (already made for this input)."""
        from cnnprune.kernels import conv_step, split_step, winograd_steps

        if mode == "winograd":
            return winograd_steps(src, None if p.fused else scratch, p.u, p.bias, dst, res, relu)
        steps = []
        if p.conv.stride == 2 and split:
            steps.append(split_step(src, phase))
        base = phase if p.conv.stride == 2 else src
        steps.append(conv_step(base, p.ho, p.wo, p.conv.shape[0], p.ngroups, p.ptr, p.chan, p.off, p.val, p.bias,
                               dst, res, relu, p.geometry))
        return steps

    def _native(self, steps: list, keep: list) -> Callable[[], object]:
        """Run consecutive native steps in one call (one parallel region); ``keep`` holds their arrays."""
        from cnnprune.kernels import Step

        array = (Step * len(steps))(*steps)
        lib, t = self.lib, self.threads
        return lambda array=array, keep=keep: lib.run_steps(array, len(array), t)

    def _program(self, n: int) -> dict:
        """Buffers (zero borders, allocated once per batch size from one huge-page ``Arena``,
        each reused once its last reader has run: ``_BufferPool``) and the forward pass: runs of
        native steps, each one call, with the layers that run dense (PyTorch) between them."""
        from cnnprune.kernels import AVGPOOL, MAXPOOL, PACK, Step, conv_pool_step

        plan = self._plan(n)
        if "program" in plan:
            return plan
        convs = plan["convs"]
        arena = Arena()
        pool = _BufferPool(arena)
        xbuf = arena.zeros((n, 3, 32, 32))
        inp = _padded(3, 32, 32, n, arena)
        stem = convs[self.net.stem.name]
        a = pool.padded(64, 32, 32, n) if stem.mode != "sparse" else None  # the fused stem needs none
        cur = pool.padded(64, 16, 16, n)
        keep = [xbuf, inp, a, cur]
        items: list = [Step(kind=PACK, src=xbuf.ctypes.data, N=n, C=3, H=32, W=32, dst=inp.ctypes.data)]

        sizes = [self._scratch_floats(p, n) for p in convs.values() if p.mode == "winograd" and not p.fused]
        scratch = arena.zeros((max(sizes),)) if sizes else None
        keep.append(scratch)

        def conv(p: _ConvPlan, src, dst, res, relu, phase, split=True) -> None:
            if p.mode == "dense":
                items.append(lambda: self._dense_conv(p, src, dst, res, relu))
            else:
                items.extend(self._conv_steps(p, p.mode, src, dst, res, relu, phase, scratch, split))

        if stem.mode == "sparse":  # with the pool, in one step: its 32x32 output never goes to memory
            items.append(conv_pool_step(inp, stem.ho, stem.wo, 64, stem.ngroups, stem.ptr, stem.chan, stem.off, stem.val,
                                        stem.bias, cur, stem.geometry))
        else:
            conv(stem, inp, a, None, True, None)
            items.append(Step(kind=MAXPOOL, src=a.ctypes.data, C=64, H=32, W=32, N=n, dst=cur.ctypes.data))
            pool.give(a)
        for b in self.net.blocks:
            p1, p2 = convs[b.conv1.name], convs[b.conv2.name]
            cout, cin = b.conv1.shape[:2]
            phase = None
            if b.conv1.stride == 2:
                phase = pool.phase(cin, cur.shape[1] // 2, cur.shape[2] // 2, n)
            mid = pool.padded(cout, p1.ho, p1.wo, n)
            conv(p1, cur, mid, None, True, phase)
            identity = cur
            if b.downsample is not None:
                pd = convs[b.downsample.name]
                identity = pool.padded(cout, pd.ho, pd.wo, n)
                # the phase planes of ``cur`` were just made by conv1: reuse them
                conv(pd, cur, identity, None, False, phase, split=p1.mode != "sparse")
            out = pool.padded(cout, p2.ho, p2.wo, n)
            conv(p2, mid, out, identity, True, None)
            keep += [phase, mid, identity, out]
            pool.give(phase, mid, cur, identity)
            cur = out
        h, w = plan["final_hw"]
        pooled = arena.zeros((n, cur.shape[0]))
        keep.append(pooled)
        items.append(Step(kind=AVGPOOL, src=cur.ctypes.data, C=cur.shape[0], H=h, W=w, N=n, dst=pooled.ctypes.data))
        program, run = [], []
        for item in items + [None]:
            if isinstance(item, Step):
                run.append(item)
                continue
            if run:
                program.append(self._native(run, keep))
                run = []
            if item is not None:
                program.append(item)
        plan.update(program=program, xbuf=xbuf, pooled=pooled)
        self._choose_engine(n, plan)
        return plan

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for input (N, 3, 32, 32). Not re-entrant: buffers are reused per batch size."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise CnnpruneError(f"input must be (N, 3, 32, 32), got {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise CnnpruneError("the native sparse engine runs on the CPU; use engine='torch-csr' on CUDA")
        prog = self._program(x.shape[0])
        if prog["engine"] == "onnxruntime":
            return torch.from_numpy(self._fallback.run(None, {"input": x.detach().float().contiguous().numpy()})[0])
        return self._run_sparse(x)

    def _run_sparse(self, x: torch.Tensor) -> torch.Tensor:
        prog = self._plans[x.shape[0]]
        prog["xbuf"][...] = x.detach().float().numpy()
        for part in prog["program"]:
            part()
        return torch.from_numpy(prog["pooled"]) @ self.net.fc_weight.t() + self.net.fc_bias


def _ort_session(model: nn.Module, threads: int):
    """In-memory onnxruntime session of the dense model, same thread count (the fallback)."""
    from cnnprune.export import onnx_bytes, ort_session

    return ort_session(onnx_bytes(model), threads)


def _paired_ms(a: Callable[[], object], b: Callable[[], object], rounds: int = 1, block_ms: float = 100.0,
               warm_ms: float = 30.0) -> tuple[float, float]:
    """Median ms per call of ``a`` and of ``b`` over blocks in A B B A order (``rounds`` times),
    so that a machine whose speed drifts weighs on both alike. Each block first runs untimed
    calls for ``warm_ms`` (at least 2): the thread pool that ran last (onnxruntime's spinning
    workers, OpenMP's) keeps the cores busy for a while after it returns, and the next engine's
    first calls pay for it; alternating single calls measured that, not the engines."""
    times: dict[int, list[float]] = {0: [], 1: []}

    def block(i: int) -> None:
        fn = (a, b)[i]
        t_end, warm = time.perf_counter() + warm_ms / 1e3, 0
        while warm < 2 or time.perf_counter() < t_end:
            fn()
            warm += 1
        t_end, timed = time.perf_counter() + block_ms / 1e3, 0
        while timed < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            fn()
            times[i].append((time.perf_counter() - t0) * 1e3)
            timed += 1

    for _ in range(rounds):
        for i in (0, 1, 1, 0):
            block(i)
    return float(np.median(times[0])), float(np.median(times[1]))


def _best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


# ------------------------------------------------------------------ im2col GEMM engines (CPU / CUDA)


GEMM_LAYOUTS = {"torch-csr": "csr", "torch-2:4": "2:4", "torch-gemm": "dense"}
SEMI_BACKENDS = ("cusparselt", "cutlass")


def _semi_structured(matrix: torch.Tensor, backend: str) -> torch.Tensor | None:
    """``matrix`` as a torch 2:4 semi-structured tensor for ``backend`` (cuSPARSELt or CUTLASS),
    or None where its shape is outside what both take (rows a multiple of 32, columns of 64):
    such a layer (the stem, fc) runs as a dense GEMM."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    rows, cols = matrix.shape
    if rows % 32 or cols % 64:
        return None
    cls = SparseSemiStructuredTensorCUTLASS if backend == "cutlass" else SparseSemiStructuredTensorCUSPARSELT
    return cls.from_dense(matrix)


def _im2col(x: torch.Tensor, k: int, stride: int, padding: int) -> tuple[torch.Tensor, int, int]:
    """Unfold a (C, N, H, W) activation into the (C·k·k, N·Ho·Wo) GEMM operand in one strided
    copy (``F.unfold`` loops over images on CUDA: one kernel launch per image and layer)."""
    c, n = x.shape[:2]
    if k == 1 and stride == 1:
        return x.reshape(c, -1), x.shape[2], x.shape[3]
    if padding:
        x = F.pad(x, (padding,) * 4)
    patches = x.unfold(2, k, stride).unfold(3, k, stride)  # (C, N, Ho, Wo, ky, kx)
    ho, wo = patches.shape[2], patches.shape[3]
    return patches.permute(0, 4, 5, 1, 2, 3).reshape(c * k * k, n * ho * wo), ho, wo


class TorchGemmResNet(nn.Module):
    """Each folded conv as weight matrix (Cout, in·kh·kw) × im2col operand, the weight held in
    one of three layouts:

    - ``csr``: ``torch.sparse`` CSR (cuSPARSE on CUDA): the naive "just use torch.sparse"
      baseline for the report's unstructured masks;
    - ``2:4``: torch's semi-structured tensor (sparse tensor cores; CUDA, fp16/bf16, backend
      cuSPARSELt or CUTLASS): needs weights pruned 2:4 (``cnnprune.prune.prune_2_4``);
    - ``dense``: a plain dense GEMM on the same path, which isolates what the weight's format
      gains from what the im2col path costs.

    Activations are kept as (C, N, H, W), so a GEMM's output (Cout, N·Ho·Wo) is the next layer's
    input with no transpose. ``dtype`` is the compute precision (input cast to it, logits
    returned as float32).
    """

    def __init__(self, net: FoldedResNet, layout: str = "csr", device: str = "cpu",
                 dtype: torch.dtype = torch.float32, backend: str = "cusparselt") -> None:
        super().__init__()
        self.net, self.layout, self.device_name, self.dtype = net, layout, device, dtype
        self.mats: dict[str, torch.Tensor] = {}
        self.formats: dict[str, str] = {}
        for c in net.convs():
            m = c.weight.reshape(c.weight.shape[0], -1).to(device=device, dtype=dtype)
            fmt = layout
            if layout == "csr":
                m = m.to_sparse_csr()
            elif layout == "2:4":
                from cnnprune.prune import is_2_4

                if m.shape[1] % 4 == 0 and not is_2_4(m):
                    raise CnnpruneError(f"layer {c.name} is not 2:4 sparse; prune the checkpoint with "
                                        "cnnprune.prune.prune_2_4 first")
                packed = _semi_structured(m, backend) if m.shape[1] % 4 == 0 else None
                fmt, m = ("2:4", packed) if packed is not None else ("dense", m)
            self.mats[c.name], self.formats[c.name] = m, fmt
        self.biases = {c.name: c.bias.to(device=device, dtype=dtype) for c in net.convs()}
        self.fc_w = net.fc_weight.to(device=device, dtype=dtype)
        self.fc_b = net.fc_bias.to(device=device, dtype=dtype)
        self.eval()

    def _conv(self, c: FoldedConv, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        cols, ho, wo = _im2col(x, c.weight.shape[2], c.stride, c.padding)
        mat, bias = self.mats[c.name], self.biases[c.name][:, None]
        if self.formats[c.name] == "csr":
            y = torch.sparse.mm(mat, cols) + bias
        elif self.formats[c.name] == "2:4":
            pad = -cols.shape[1] % 16  # the sparse kernels' dense operand: columns a multiple of 16
            y = torch.mm(mat, F.pad(cols, (0, pad)) if pad else cols)[:, : cols.shape[1]] + bias
        else:
            y = torch.addmm(bias, mat, cols)
        return y.reshape(-1, n, ho, wo)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device_name, dtype=self.dtype).permute(1, 0, 2, 3).contiguous()
        x = self._conv(self.net.stem, x).relu()
        x = F.max_pool2d(x, 3, 2, 1)  # (C, N, H, W): pools each (channel, image) plane alike
        for b in self.net.blocks:
            identity = self._conv(b.downsample, x) if b.downsample is not None else x
            y = self._conv(b.conv1, x).relu()
            x = (self._conv(b.conv2, y) + identity).relu()
        x = x.mean((2, 3)).t()
        return (x @ self.fc_w.t() + self.fc_b).float()


# ------------------------------------------------------------------ entry point


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Dense state_dict from a ``.csr.pt`` file or a permanent ``.pth`` checkpoint."""
    path = Path(path)
    state = csr.load_state(path) if path.name.endswith(".csr.pt") else load_state_dict(path)
    check_state_dict(build_model(), state, str(path))
    return state


def load(path: str | Path, engine: str = "native", device: str = "cpu", threads: int | None = None,
         calibrate: bool = True, dense_fallback: bool = True, dtype: torch.dtype | None = None,
         backend: str = "cusparselt", winograd: bool = True, layer_mode: str | None = None) -> nn.Module:
    """Load a pruned model for sparse inference: input (N, 3, 32, 32) → logits (N, 10), eval mode.

    ``engine``: ``native`` (C kernels, CPU, per-layer choice of sparse kernel, Winograd or
    dense), ``torch-csr`` (``torch.sparse``; CPU or CUDA), ``torch-2:4`` (semi-structured sparse
    tensor cores; CUDA, a checkpoint pruned 2:4) or ``torch-gemm`` (the same im2col path with
    dense weights).
    ``threads``: CPU threads for the native kernels. ``calibrate``: time each way a layer can
    run (sparse kernel, Winograd, dense oneDNN) per layer and per batch size on first use (a
    few hundred ms per new batch size; seconds at batch 250) and keep the fastest;
    ``dense_fallback``: also compare the whole network with dense onnxruntime and run that
    where it wins, so the result is never slower than dense. Without calibration every layer
    runs sparse. ``winograd``: let calibration pick Winograd F(4x4, 3x3) (a dense algorithm
    with 4x fewer multiplies; fp32 rounding error about 10x a direct convolution's) where it is faster; False keeps the
    sparse kernel and dense oneDNN only. ``layer_mode`` ("sparse" or "winograd"): run every
    layer that can this way, no per-layer timing (tests, A/B measurements). ``dtype`` (im2col
    engines): compute precision, default float32, float16 for ``torch-2:4``; ``backend``
    (``torch-2:4``): ``cusparselt`` or ``cutlass``.
    """
    if engine not in ENGINES:
        raise CnnpruneError(f"engine {engine!r} is unknown; choose one of {', '.join(ENGINES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CnnpruneError(f"device {device}: no CUDA GPU is available here; use device='cpu'")
    if engine == "torch-2:4":
        dtype = dtype or torch.float16
        if not device.startswith("cuda"):
            raise CnnpruneError("engine 'torch-2:4' runs on CUDA GPUs only (sparse tensor cores); use device='cuda'")
        if dtype not in (torch.float16, torch.bfloat16):
            raise CnnpruneError(f"engine 'torch-2:4' computes in float16 or bfloat16, not {dtype}")
        if backend not in SEMI_BACKENDS:
            raise CnnpruneError(f"backend {backend!r} is unknown; choose one of {', '.join(SEMI_BACKENDS)}")
        if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
            raise CnnpruneError("this PyTorch build has no cuSPARSELt; use backend='cutlass'")
        if backend == "cutlass" and torch.cuda.get_device_capability(device)[0] != 8:
            raise CnnpruneError("PyTorch's CUTLASS 2:4 kernels run on compute capability 8.x (Ampere) only; "
                                "use backend='cusparselt' on this GPU")
    state = read_state(path)
    net = fold_resnet(state)
    if engine == "native":
        if device != "cpu":
            raise CnnpruneError("the native sparse engine runs on the CPU; use engine='torch-csr' for CUDA")
        dense = None
        if dense_fallback:
            dense = build_model()
            dense.load_state_dict(state)
        return NativeSparseResNet(net, threads, calibrate, dense, winograd, layer_mode)
    return TorchGemmResNet(net, GEMM_LAYOUTS[engine], device, dtype or torch.float32, backend)
