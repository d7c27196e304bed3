"""The native engine's plan of one convolution at one batch size, and the operands it runs:
sparse operands cut by input-channel group and kernel tap (``sparse_operands``), Winograd's
transformed weights, the span kernel's tilings, and activation buffers in the padded
(C, H+2, W+2, N) layout; calibration times them with :mod:`cnnprune.timing`.
:mod:`cnnprune.native` puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnnprune.buffers import Arena
from cnnprune.errors import CnnpruneError
from cnnprune.fold import FoldedConv
from cnnprune.kernels import SPAN_SUMS, conv_span_eligible
from cnnprune.layouts import encode_csr

MODES = ("sparse", "winograd", "dense", "gemm")
# Winograd layers with at least this many GEMM panels per thread run fused (``csrc/winograd.c``):
# transformed input kept in each thread's cache (faster at batch 32, see the README); with fewer
# panels the two-step variant spreads the work better.
FUSED_PANELS_PER_THREAD = 2
# Input-channel groups of a 1x1 span convolution: each (output channel, group) pass reloads and
# stores its accumulators, so a group should hold SPAN_RUN nonzeros of a channel on average,
# but its input block (channels x the span's block, which the kernel copies channel after
# channel) should also stay within SPAN_GROUP_BYTES of L2; the group is never below SPAN_MIN_RUN
# nonzeros a channel nor below SPAN_LEAST_BYTES of the block (the L1 data cache).
# SPAN_ROWS: the span tile's pieces of 8 vectors by vector width (csrc/tiles.h). Timed per
# layer (interleaved runs of one layer at groups of 16 channels to all of them, four runs) on
# ResNet-50 at 224, 90 %, batch 16, on a Zen 3 (AVX2: 256-byte blocks), after the block copy
# came in: the former groups of 45-109 channels (32 nonzeros a channel, blocks taken as
# AVX-512's 1536 bytes) ran up to 2x slower than groups of 128-512 in layers under 35 % dense
# (256x1024 at 15 %: 12.3 ms in groups of 109, 4.7-6.4 ms in 256); in denser layers groups of
# 128 beat 64 by up to 30 % in three runs and lost by up to 10 % in one (the machine's load
# moved the best group); at batch 1 these rules give groups within 15 % of each layer's best.
SPAN_RUN = 40
SPAN_MIN_RUN = 16
SPAN_GROUP_BYTES = 128 * 1024
SPAN_LEAST_BYTES = 32 * 1024
SPAN_ROWS = {8: 1, 16: 3}
# A span tile whose groups' partial sums go to a per-thread scratch (``SpanTile.sums``) takes
# input-channel groups of SPAN_SUM_GROUP_BYTES of its block, the L1 data cache: the partial sums
# no longer pass through the output planes, a plane apart, between groups.
SPAN_SUM_GROUP_BYTES = 32 * 1024
# Input channels per group of a 3x3 layer over the span (``group_size``): the input its block
# reads from a group, within the L1 data cache. ResNet-50 90 %'s layer2 and layer3 shapes at
# batch 1 ran fastest at 32-64 channels of 0.6-0.8 KB (2 threads, interleaved).
CONV_SPAN_GROUP_BYTES = 32 * 1024
# A residual convolution writes its output over its residual where it is that buffer's last
# reader (csrc/kernels.h, step_t): one stream the output's size less through memory.
ONTO_RESIDUAL = True


@dataclass(frozen=True)
class SpanTile:
    """How the sparse span kernel tiles a 1x1 layer (``sparse_span_body``): ``pieces`` of 8
    vectors an output channel per tile (3 on AVX-512: 24 accumulators), and whether the partial
    sums of its input-channel groups go to a per-thread scratch (``sums``) instead of the output
    planes. No one tiling wins every layer (on an AVX-512 Xeon one piece won the moderately
    sparse layers, three the sparsest, the scratch sums those of many input channels; the
    README has the figures), so calibration times each of ``span_tiles`` per layer and keeps
    the fastest."""

    pieces: int
    sums: bool = False

    @property
    def flag(self) -> int:
        """The span step's rows argument (``kernels.span_step``)."""
        return self.pieces | (SPAN_SUMS if self.sums else 0)

    @property
    def label(self) -> str:
        """As ``layer_choice`` shows it: ``3x8`` (pieces x vectors), ``1x8+sums``."""
        return f"{self.pieces}x8" + ("+sums" if self.sums else "")

    def block_floats(self, vector_width: int) -> int:
        """Floats of each input channel in a work item's block: the pieces of 8 vectors
        (``block`` in ``sparse_span_body``)."""
        return self.pieces * 8 * vector_width

    @classmethod
    def from_flag(cls, flag: int) -> SpanTile | None:
        """The tiling a ``flag`` stands for (a plan cache's record), None if it names none."""
        pieces = flag & ~SPAN_SUMS
        return cls(pieces, bool(flag & SPAN_SUMS)) if 1 <= pieces <= 3 else None


def fold_tiles(ms: dict[str, float], tiles: list[SpanTile | None]) -> SpanTile | None:
    """The fastest of a layer's sparse tilings, timed as ``sparse0``, ``sparse1``, ... in
    ``ms``: those entries become one, ``ms["sparse"]``, the fastest's time."""
    times = [ms.pop(f"sparse{i}") for i in range(len(tiles))]
    best = min(range(len(tiles)), key=times.__getitem__)
    ms["sparse"] = times[best]
    return tiles[best]


def sum_group(block_bytes: int) -> int:
    """Input channels per group of a span tile with scratch sums, whose block holds
    ``block_bytes`` of each channel: as many as fill ``SPAN_SUM_GROUP_BYTES``."""
    return max(1, SPAN_SUM_GROUP_BYTES // block_bytes)


def span_floats(ho: int, wo: int, n: int) -> int:
    """Floats in the interior span of a padded (ho+2, wo+2, n) plane (``span_of`` in C)."""
    return (ho - 1) * (wo + 2) * n + wo * n


def span_tiles(vector_width: int, floats: int, cin: int) -> tuple[SpanTile, ...]:
    """The distinct tilings calibration times for a span layer of ``cin`` input channels over
    spans of ``floats``, the default (``SPAN_ROWS``) first: more pieces than a span fills run as
    fewer (so one piece only is timed once), and scratch sums only where their L1-sized groups
    cut the input channels (with one group there is nothing to keep between groups)."""
    piece = SpanTile(1).block_floats(vector_width)
    fill = max(1, -(-floats // piece))
    tiles = [SpanTile(min(SPAN_ROWS[vector_width], fill)), SpanTile(1)]
    if sum_group(min(floats, piece) * 4) < cin:
        tiles.append(SpanTile(1, sums=True))
    return tuple(dict.fromkeys(tiles))


@dataclass
class ConvPlan:
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
    winograd_ok: bool = False  # the shape allows Winograd and the engine may use it
    span: bool = False  # a 1x1 convolution run as one product over each plane's span (``span_eligible``)
    span_tile: SpanTile | None = None  # its span tiling (``SpanTile``; None: the default, or a k x k layer's row tiles)
    conv_span: bool = False  # a graph-planned 3x3 layer that may also run over the span (``conv_span_offered``)
    dense_ok: bool = True  # the host's dense mode may run it (not a grouped one: its dense weight is groups times larger)
    gemm_ok: bool = False  # the native dense 1x1 kernel may run it (``gemm_eligible``)
    border: int = 1  # pixels of zero border around its input buffer: its padding where that is wider than 1
    direct: bool = False  # stride 2 read from the input itself, no phase planes (``kernels.direct_stride2``)
    # (with conv_span, a stride-2 layer's phase planes are in the span's geometry for every tiling: ``phase_dims``)
    g: np.ndarray | None = None  # its packed dense weight (``gemm_weights``)
    fused: bool = False
    residual: bool = False  # the forward pass adds a residual into its output: calibrated with one (``_choose_layers``)
    onto: bool = False  # and writes its output over that residual (``ONTO_RESIDUAL``): calibrated so
    dense_weight: object | None = None  # the host's dense weight (the torch-hosted engine's oneDNN mode)
    ms: dict[str, float] = field(default_factory=dict)

    @property
    def geometry(self) -> tuple[int, int, int, int, int]:
        """Kernel size, stride, padding, input height and width: what the sparse kernel needs to
        skip the taps that read only the zero border."""
        return self.conv.shape[2], self.conv.stride, self.conv.padding, self.hin, self.win

    def tilings(self, n: int, vector_width: int) -> tuple[SpanTile | None, ...]:
        """The sparse kernel's tilings calibration times for this layer at batch ``n``: a span
        layer's ``span_tiles``, else the row tiles (None) and, where offered, the span of one
        piece (``conv_span_offered``)."""
        if self.span:
            return span_tiles(vector_width, span_floats(self.ho, self.wo, n), self.conv.shape[1])
        return (None, SpanTile(1)) if self.conv_span else (None,)

    def phase_shape(self, n: int) -> tuple[int, int, int, int]:
        """The 4 phase planes this stride-2 layer reads at batch ``n`` (``phase_dims``)."""
        return (4 * self.conv.shape[1], *phase_dims(self.hin, self.win, self.border, self.conv_span), n)

    @property
    def pieces(self) -> int:
        """A k x k layer's tile pieces over the span (``kernels.conv_step``), 0 for row tiles."""
        return self.span_tile.pieces if self.span_tile is not None and not self.span else 0

    @property
    def tiled(self) -> bool:
        """Whether the sparse kernel has tilings to choose from (``tilings``), kept by a plan cache."""
        return self.span or self.conv_span

    def operands(self) -> tuple:
        """Every operand array the plan may hold (``None`` where not made)."""
        return self.ptr, self.chan, self.off, self.val, self.bias, self.u, self.dense_weight, self.g

    def release(self, everything: bool = False) -> None:
        """Drop the operands of the modes not chosen (what the plan holds is what it runs), or
        with ``everything`` of all modes (the network runs on a dense engine)."""
        kept = None if everything else self.mode
        if kept != "sparse":
            self.ptr = self.chan = self.off = self.val = None
        if kept != "winograd":
            self.u = None
        if kept != "dense":
            self.dense_weight = None
        if kept != "gemm":
            self.g = None


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


def winograd_weights(conv: FoldedConv, block: int | None = None) -> np.ndarray:
    """U = G g G^T of every (output, input) channel pair, computed in float64 and packed as
    ``csrc/winograd.c`` reads it: [36 transform points][Cout/4][Cin][4 output channels]."""
    w = conv.dense()
    cout, cin = w.shape[:2]
    if cout % 4:
        raise CnnpruneError(f"layer {conv.name}: Winograd needs a multiple of 4 output channels, got {cout}")
    u = np.empty((36, cout // 4, cin, 4), dtype=np.float32)
    # G g G^T as two GEMMs over many channel pairs at once (einsum took ~50 ms a layer: 0.4 s a
    # load), a few output channels at a time: float64 temporaries of a whole 256-channel layer
    # were 30 MB, more than the runtime's activations at batch 32; and GEMMs this small (at
    # most ~110 k multiply-adds) stay on one thread in numpy's OpenBLAS, whose threads would
    # otherwise spin on both cores for a while and slow the next layer's calibration timings
    # several fold
    block = block or max(4, 1024 // cin // 4 * 4)
    for o in range(0, cout, block):
        g = w[o:o + block].astype(np.float64)
        t = np.tensordot(np.tensordot(g, _WG_G, axes=([2], [1])), _WG_G, axes=([2], [1]))  # (o, c, 6, 6)
        u[:, o // 4:(o + len(g)) // 4] = t.reshape(len(g) // 4, 4, cin, 36).transpose(3, 0, 2, 1)
    return u


def sparse_operands(conv: FoldedConv, hin: int, win: int, n: int, group: int, narrow: bool = True, border: int = 1,
                    direct: bool = False, wide: bool = False) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    """The folded weight as the kernel reads it (``csrc/sparse_conv.c``): nonzeros ordered by
    (group of ``group`` input channels, output channel, kernel column, kernel row): a tile
    streams one group's runs channel after channel. ``ptr``: the start of each such segment
    (k*k per run: the kernel skips the taps that read only the zero border); ``chan``: the
    nonzeros before each output channel (how work is cut into equal shares); each nonzero's
    input offset (in pixels of ``n`` floats) and value. Offsets are uint16 where they all fit
    (``narrow``: every layer of the CIFAR ResNet18, any batch), else int32: the nonzeros are
    streamed from memory in every pass, for only 4-16 multiply-adds each at batch 1, so 6
    instead of 8 bytes per nonzero is time saved. ``border``: pixels of zero border around the
    input (its padding where that is wider than 1: the stem reads the packed input).
    ``direct``: a stride-2 convolution that reads the padded input itself
    (``kernels.direct_stride2``), offsets as for stride 1; else stride 2 reads phase planes of
    ``phase_dims`` (``wide``: a row and a column wider, for the span)."""
    cout, cin, kh, kw = conv.shape
    ptr, chan, ngroups, (ci, ky, kx, values) = _runs(conv, group)
    oy, ox = ky - conv.padding + border, kx - conv.padding + border
    if conv.stride == 1 or direct:
        row = (win + 2 * border) * n
        off = ci.astype(np.int64) * (hin + 2 * border) * row + oy * row + ox * n
    else:
        hh, wh = phase_dims(hin, win, border, wide)
        row = wh * n
        plane = ((oy % 2) * 2 + (ox % 2)) * cin + ci
        off = plane.astype(np.int64) * hh * row + (oy // 2) * row + (ox // 2) * n
    off //= n  # every offset is a whole pixel: the kernel multiplies by the batch
    top = int(off.max()) if off.size else 0
    if top >= 2**31:
        raise CnnpruneError(f"batch {n} is too large for the native sparse engine's 32-bit offsets; use a smaller batch")
    narrow = narrow and top < 2**16
    return ptr, chan, ngroups, off.astype(np.uint16 if narrow else np.int32), values


def phase_dims(hin: int, win: int, border: int = 1, wide: bool = False) -> tuple[int, int]:
    """Rows and columns of each phase plane of a stride-2 convolution over an ``hin`` x ``win``
    map with ``border`` pixels of padding (``kernels.split_step``): half the padded map, or with
    ``wide`` a row and a column more, the output's padded geometry, so that the span kernel
    reads phase and output planes alike (``kernels.conv_span_eligible``)."""
    return (hin + 2 * border) // 2 + wide, (win + 2 * border) // 2 + wide


def _runs(conv: FoldedConv, group: int) -> tuple[np.ndarray, np.ndarray, int, tuple]:
    """The nonzeros in kernel order (see ``sparse_operands``): ``ptr``, ``chan``, the group
    count, and each nonzero's input channel, kernel row, kernel column and value (float32)."""
    cout, cin, kh, kw = conv.shape
    co, ci, ky, kx, values = conv.coo()
    ngroups = -(-cin // group)
    segment = (((ci // group) * cout + co) * kw + kx) * kh + ky
    order = np.argsort(segment, kind="stable")
    ptr = np.zeros(cout * ngroups * kh * kw + 1, dtype=np.int32)
    ptr[1:] = np.cumsum(np.bincount(segment, minlength=cout * ngroups * kh * kw))
    chan = np.zeros(cout + 1, dtype=np.int32)
    chan[1:] = np.cumsum(np.bincount(co, minlength=cout))
    return ptr, chan, ngroups, (ci[order], ky[order], kx[order], np.ascontiguousarray(values[order], dtype=np.float32))


def span_eligible(conv: FoldedConv, hin: int, win: int) -> bool:
    """A 1x1 convolution without padding, stride 1, or stride 2 on an even map (its input
    subsampled first, ``kernels.subsample_step``): the sparse kernel runs it over each plane's
    whole interior span (``kernels.span_step``), full vectors however narrow the map."""
    return conv.shape[2:] == (1, 1) and conv.padding == 0 and (
        conv.stride == 1 or (conv.stride == 2 and hin % 2 == 0 and win % 2 == 0))


def conv_span_offered(p: ConvPlan, n: int, vector_width: int) -> bool:
    """Whether calibration also times a 3x3 layer's sparse kernel over each plane's span
    (``kernels.conv_step`` with pieces; ``conv_span_eligible``, the input's border its padding;
    stride 2 over phase planes, not where it reads its input directly):
    where the row tiles cut an output row of ``n``-float pixels into several pieces (vectors,
    then 8, 4, 2, 1 floats), each streaming every nonzero. At batch 1 the span ran ResNet-50 90
    %'s 14x14 and 7x7 3x3s 1.7-1.9x faster and its 28x28 ones 1.2x; rows of one piece (whole
    vectors, or the CIFAR ResNet18's 8-, 4- and 2-float rows, 1.3-1.8x slower over the span,
    where row tiles skip the taps on the border) are not timed."""
    conv = p.conv
    return (p.border == 1 and conv.shape[2] == conv.shape[3] and not p.direct
            and conv_span_eligible(conv.shape[2], conv.stride, conv.padding, p.hin, p.win, p.ho, p.wo)
            and (p.wo * n) % vector_width != 0 and bin(p.wo * n).count("1") > 1)


def gemm_eligible(conv: FoldedConv, hin: int, win: int) -> bool:
    """A span convolution (``span_eligible``) with a multiple of 4 output channels: the native
    dense 1x1 kernel (``csrc/gemm1x1.c``) computes 4 at a time."""
    return span_eligible(conv, hin, win) and conv.shape[0] % 4 == 0


# The host's dense convolution is timed for a layer only where no native dense kernel (the 1x1
# GEMM, Winograd) is timed for it, or where the layer is nearly unpruned: the only layers it has
# been measured to win (ResNet-50 at 224, 50 % and unpruned, batch 1 and 16; the report's
# ResNet18 at batch 1 and 32: 3x3 convolutions without Winograd, stride 2 or 14x14 and 7x7 maps,
# and unpruned ones). Its calls, one layout conversion each way included, were ~8 s of ResNet-50
# 90 %'s 15 s of per-layer timing at batch 16, won by no layer.
HOST_DENSE_DENSITY = 0.9


def probes_host_dense(p: ConvPlan, native_dense: bool) -> bool:
    """Whether calibration times the host's dense convolution for ``p`` (``HOST_DENSE_DENSITY``)."""
    return not native_dense or p.conv.density > HOST_DENSE_DENSITY


def gemm_weights(conv: FoldedConv) -> np.ndarray:
    """The dense (Cout, Cin) weight of a 1x1 convolution packed as ``csrc/gemm1x1.c`` reads it:
    [Cout/4][Cin][4 output channels]."""
    cout, cin = conv.shape[:2]
    w = conv.dense().reshape(cout // 4, 4, cin)
    return np.ascontiguousarray(w.transpose(0, 2, 1), dtype=np.float32)


# A linear layer runs only its nonzeros, in CSR (``kernels.linear_step``), where at most this
# fraction of its weight is nonzero: at batch 1 (each nonzero gathered, 16 a step) / above (one
# multiply-add over up to 16 images a nonzero). Measured on the Xeon, 2 threads, a 2048 x 1000
# and a 1280 x 1000 weight: at batch 1 CSR 3.6x / 2.6x faster at 10 % dense, 1.5x / 1.1x at 30 %,
# 0.8x / 0.7x at 50 %; at batch 16 1.5x / 1.5x at 70 % (the README's table).
SPARSE_LINEAR_DENSITY = (0.3, 0.7)


def sparse_linear(weight: np.ndarray, n: int) -> bool:
    """Whether a linear layer's (Cout, C) weight runs in CSR at batch ``n`` (``SPARSE_LINEAR_DENSITY``)."""
    return np.count_nonzero(weight) <= SPARSE_LINEAR_DENSITY[n > 1] * weight.size


def linear_operands(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A linear layer's (Cout, C) weight in CSR (``layouts.encode_csr``) as the kernel reads it:
    int32 row starts, int32 input indices, float32 values."""
    csr = encode_csr(weight).arrays
    return (csr["crow_indices"].astype(np.int32), csr["col_indices"].astype(np.int32),
            np.ascontiguousarray(csr["values"], dtype=np.float32))


def span_operands(conv: FoldedConv, group: int, narrow: bool = True) -> tuple:
    """``sparse_operands`` of a span convolution, but each nonzero's offset is its input channel:
    the kernel reads channel c of a work item's block at c times the block's width in its
    per-thread copy of the block (``sparse_span_body``)."""
    ptr, chan, ngroups, (ci, _, _, values) = _runs(conv, group)
    narrow = narrow and conv.shape[1] <= 2**16
    return ptr, chan, ngroups, ci.astype(np.uint16 if narrow else np.int32), values


def group_size(lib, conv: FoldedConv, row_floats: int, ho: int, n: int, min_run: int = 32, span: bool = False,
               tile: SpanTile | None = None) -> int:
    """Input channels per group: the L1-sized group of the kernel, widened in very sparse layers
    until an output channel has about ``min_run`` nonzeros per group on average, since each
    (channel, group) pass reloads and stores its accumulators (a span ``tile`` with scratch sums:
    the L1-sized group, ``SPAN_SUM_GROUP_BYTES``; a k x k layer's ``tile`` over the span: its
    block and the rows its taps reach within ``CONV_SPAN_GROUP_BYTES``)."""
    cout, cin, k, _ = conv.shape
    nnz = max(conv.nnz, 1)
    if span:
        tile = tile or SpanTile(SPAN_ROWS[lib.vector_width()])
        # bytes of one input channel in a work item's block: the tile's pieces of 8 vectors
        block = min(span_floats(ho, row_floats // n, n), tile.block_floats(lib.vector_width())) * 4
        if tile.sums:
            return min(cin, sum_group(block))
        fit = max(1, SPAN_GROUP_BYTES // block)
        run = -(-SPAN_RUN * cout * cin // nnz)
        least = max(-(-SPAN_MIN_RUN * cout * cin // nnz), SPAN_LEAST_BYTES // block)
        return min(cin, max(least, min(run, fit)))
    if tile is not None:  # a k x k layer over the span: its block plus the rows its taps reach, in each phase plane
        stride = conv.stride
        floats = stride**2 * (min(span_floats(ho, row_floats // n, n), tile.block_floats(lib.vector_width())) +
                              (k - 1) // stride * (row_floats + 2 * n))
        l1 = max(1, CONV_SPAN_GROUP_BYTES // (floats * 4))
    else:
        l1 = lib.channels_per_group(row_floats, ho, n, conv.stride, k, cin)
    return min(cin, max(l1, -(-min_run * cout * cin // nnz)))


def padded(c: int, h: int, w: int, n: int, arena: Arena | None = None, border: int = 1) -> np.ndarray:
    shape = (c, h + 2 * border, w + 2 * border, n)
    return arena.zeros(shape) if arena is not None else np.zeros(shape, dtype=np.float32)


def random_padded(c: int, h: int, w: int, n: int, arena: Arena, border: int = 1, seed: int = 0) -> np.ndarray:
    """A padded map for timing a layer, its interior written (so that its pages are real memory,
    not the shared zero page a fresh mapping reads) with one seeded random row repeated in every
    row and channel: the kernels' time does not depend on the values, and drawing a random
    number per float took 1.5 s of ResNet-50's 8 s of per-layer timing at batch 16."""
    a = padded(c, h, w, n, arena, border)
    a[:, border:-border, border:-border, :] = np.random.default_rng(seed).random((w, n), dtype=np.float32)
    return a
