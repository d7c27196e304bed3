"""The C kernels against F.conv2d on single layers: the sparse convolution with every tile
shape, row remainder, input-channel grouping, stride, empty channel and thread count the
network can produce; Winograd F(4x4, 3x3), two-step and fused, at every batch class (one
column per tile, fewer images than a vector, whole vectors, vectors plus a remainder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnprune.activations import apply_activation
from cnnprune.buffers import Arena
from cnnprune.fold import FoldedConv
from cnnprune.kernels import (
    ROUND_SLACK,
    Step,
    conv_pool_step,
    conv_step,
    gemm_step,
    library,
    linear_step,
    span_step,
    split_step,
    subsample_step,
    tail_slack,
    winograd_steps,
)
from cnnprune.native import from_nchw, to_nchw
from cnnprune.native_plan import (
    SpanTile,
    gemm_weights,
    linear_operands,
    padded,
    phase_dims,
    span_floats,
    span_operands,
    sparse_operands,
    winograd_eligible,
    winograd_weights,
)
from cnnprune.plan import ACT_NAMES


def padded_from(t: torch.Tensor | None, arena: Arena | None = None) -> np.ndarray | None:
    """An NCHW tensor in the kernels' padded (C, H+2, W+2, N) layout (None stays None), cut from
    ``arena`` where given (memory follows it: ``kernels.tail_slack``), else its own array."""
    if t is None:
        return None
    n, c, h, w = t.shape
    buf = padded(c, h, w, n, arena)
    from_nchw(t, buf)
    return buf


def assert_zero_border(buf: np.ndarray) -> None:
    assert not buf[:, 0].any() and not buf[:, -1].any() and not buf[:, :, 0].any() and not buf[:, :, -1].any(), \
        "the zero border is kept"


def run_kernel(conv: FoldedConv, x: torch.Tensor, group: int, threads: int,
               res: torch.Tensor | None = None, relu: bool = True, narrow: bool = True, onto: bool = False,
               pieces: int = 0, slack: bool = False) -> torch.Tensor:
    """The sparse convolution; ``onto``: its output written over the residual's buffer;
    ``pieces``: over the span (the CONV_SPAN step), its input followed by memory with ``slack``
    (the span rounded up to whole vectors) or not (a tail in narrow tiles)."""
    lib = library()
    n, cin, h, w = x.shape
    cout, _, k, _ = conv.weight.shape
    ho, wo = (h + 2 * conv.padding - k) // conv.stride + 1, (w + 2 * conv.padding - k) // conv.stride + 1
    src, resbuf = padded_from(x, Arena() if slack else None), padded_from(res)
    assert (tail_slack(src) >= ROUND_SLACK) == slack
    dst = resbuf if onto else padded(cout, ho, wo, n)
    wide = bool(pieces) and conv.stride == 2  # phase planes in the output's geometry, their last row and column unwritten
    ptr, chan, ngroups, off, val = sparse_operands(conv, h, w, n, group, narrow, wide=wide)
    steps, base = [], src
    if conv.stride == 2:
        base = (Arena() if slack else None, (4 * cin, *phase_dims(h, w, 1, wide), n))
        base = base[0].zeros(base[1]) if base[0] else np.empty(base[1], dtype=np.float32)
        base[...] = np.nan
        steps.append(split_step(src, base))
    steps.append(conv_step(base, ho, wo, cout, ngroups, ptr, chan, off, val, conv.bias, dst, resbuf, relu,
                           (k, conv.stride, conv.padding, h, w), pieces=pieces))
    lib.run_steps((Step * len(steps))(*steps), len(steps), threads)
    assert_zero_border(dst)
    return to_nchw(dst)


def random_conv(cin: int, cout: int, k: int, stride: int, density: float, seed: int) -> FoldedConv:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin, k, k, generator=g)
    weight[torch.rand(weight.shape, generator=g) >= density] = 0
    weight[0] = 0  # output channels with no nonzero at all, first and last
    weight[-1] = 0
    return FoldedConv("c", weight.numpy(), torch.randn(cout, generator=g).numpy(), stride, 1 if k == 3 else 0)


def reference(conv: FoldedConv, x: torch.Tensor, res: torch.Tensor | None, relu: int) -> torch.Tensor:
    """F.conv2d, the residual, and the activation of code ``relu`` (``activations.ACTS``; True = ReLU)."""
    y = F.conv2d(x, torch.from_numpy(conv.weight), torch.from_numpy(conv.bias), stride=conv.stride, padding=conv.padding)
    if res is not None:
        y = y + res
    return apply_activation(y, ACT_NAMES[int(relu)])


@pytest.mark.parametrize("n", [1, 2, 5, 8, 16, 32])
@pytest.mark.parametrize("k, stride, hw", [(3, 1, 16), (3, 1, 7), (3, 1, 5), (3, 2, 8), (1, 2, 8), (3, 1, 2), (3, 1, 1),
                                           (3, 2, 2), (3, 2, 4)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6, 1.0])
def test_sparse_conv_matches_conv2d(n: int, k: int, stride: int, hw: int, density: float) -> None:
    conv = random_conv(12, 24, k, stride, density, seed=n * 100 + hw)
    x = torch.randn(n, 12, hw, hw, generator=torch.Generator().manual_seed(n))
    want = reference(conv, x, None, True)
    for group in (1, 5, 12):
        for threads in (1, 2):
            for narrow in (True, False):
                got = run_kernel(conv, x, group, threads, narrow=narrow)
                assert (got - want).abs().max() <= 1e-4, (group, threads, narrow)


@pytest.mark.parametrize("n", [1, 2, 3, 16])
@pytest.mark.parametrize("stride, hw", [(1, 1), (1, 2), (1, 5), (1, 7), (1, 14), (1, 28), (2, 2), (2, 6), (2, 14),
                                        (2, 28)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.6, 1.0])
def test_3x3_over_the_span_matches_conv2d(n: int, stride: int, hw: int, density: float) -> None:
    """3x3 convolutions as one product over each plane's span (CONV_SPAN): stride 1, and stride 2
    over phase planes in the output's geometry (NaN where the split leaves them unwritten: no
    output may read it); every map width, spans rounded up to whole vectors (memory after the
    input) or ending in narrow tiles, input-channel groups, tiles of 1-3 pieces, threads,
    residual and activations, and the border zero afterwards (the span computes the border
    pixels between rows)."""
    conv = random_conv(12, 24, 3, stride, density, seed=n * 31 + hw)
    x = torch.randn(n, 12, hw, hw, generator=torch.Generator().manual_seed(hw)) * 4
    res = torch.randn(n, 24, hw // stride, hw // stride, generator=torch.Generator().manual_seed(n))
    for r, act in ((None, 1), (res, 1), (None, 0), (res, 4)):
        want = reference(conv, x, r, act)
        for group, threads, pieces, slack, narrow in ((12, 1, 1, True, True), (5, 2, 1, False, True), (1, 3, 3, True, False),
                                                      (5, 2, 2, False, False), (12, 2, 3, False, True)):
            got = run_kernel(conv, x, group, threads, r, act, narrow, pieces=pieces, slack=slack)
            assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max())), (act, group, threads, pieces, slack)


@pytest.mark.parametrize("k, stride, pad, hw", [(3, 2, 1, 7), (1, 1, 0, 8), (5, 1, 2, 8), (3, 1, 0, 8)])
def test_the_span_refuses_a_convolution_it_cannot_run(k: int, stride: int, pad: int, hw: int) -> None:
    conv = FoldedConv("c", np.ones((4, 4, k, k), np.float32), np.zeros(4, np.float32), stride, pad)
    ho = (hw + 2 * pad - k) // stride + 1
    src, dst = padded(4, hw, hw, 1), padded(4, ho, ho, 1)
    ptr, chan, ngroups, off, val = sparse_operands(conv, hw, hw, 1, 4)
    with pytest.raises(ValueError, match="span convolution needs a 3x3 kernel"):
        conv_step(src, ho, ho, 4, ngroups, ptr, chan, off, val, conv.bias, dst, None, True, (k, stride, pad, hw, hw), pieces=1)


def test_the_span_takes_one_to_three_pieces_and_outputs_of_its_geometry() -> None:
    conv = FoldedConv("c", np.ones((4, 4, 3, 3), np.float32), np.zeros(4, np.float32), 1, 1)
    src = padded(4, 6, 6, 1)
    ptr, chan, ngroups, off, val = sparse_operands(conv, 6, 6, 1, 4)
    for pieces, dst in ((4, padded(4, 6, 6, 1)), (16 | 1, padded(4, 6, 6, 1)), (1, padded(4, 5, 6, 1)), (1, padded(4, 6, 6, 2))):
        with pytest.raises(ValueError, match="takes 1-3 pieces"):
            conv_step(src, 6, 6, 4, ngroups, ptr, chan, off, val, conv.bias, dst, None, True, (3, 1, 1, 6, 6), pieces=pieces)


def test_tail_slack_is_the_memory_after_an_array_within_its_owner() -> None:
    big = np.zeros(100, np.float32)
    assert tail_slack(big) == 0 and tail_slack(big[:90]) == 40 and tail_slack(big[::2]) == 0
    assert tail_slack(Arena().zeros((3, 5))) >= ROUND_SLACK
    assert tail_slack(np.frombuffer(bytes(64), np.float32)[:8]) == 32


def run_span(conv: FoldedConv, x: torch.Tensor, group: int, threads: int, res: torch.Tensor | None, act: int,
             narrow: bool = True, gemm: bool = False, rows: int = 0, onto: bool = False) -> np.ndarray:
    """The span kernel (``rows``: its tiling, ``SpanTile.flag``), or with ``gemm`` the dense 1x1
    kernel over the same span; ``onto``: the output written over the residual's buffer."""
    n, cin, h, w = x.shape
    ho, wo = h // conv.stride, w // conv.stride
    src, resbuf = padded_from(x), padded_from(res)
    dst = resbuf if onto else padded(conv.weight.shape[0], ho, wo, n)
    ptr, chan, ngroups, off, val = span_operands(conv, group, narrow)
    steps, base = [], src
    if conv.stride == 2:  # the kernel reads the input subsampled
        base = np.full((cin, ho + 2, wo + 2, n), np.nan, dtype=np.float32)
        base[:, 0], base[:, -1], base[:, :, 0], base[:, :, -1] = 0, 0, 0, 0
        steps.append(subsample_step(src, base))
    if gemm:
        packed = gemm_weights(conv)
        steps.append(gemm_step(base, packed, conv.bias, dst, resbuf, act))
    else:
        steps.append(span_step(base, conv.weight.shape[0], ngroups, ptr, chan, off, val, conv.bias, dst, resbuf, act,
                               rows=rows))
    library().run_steps((Step * len(steps))(*steps), len(steps), threads)
    return dst


@pytest.mark.parametrize("n", [1, 2, 3, 16])
@pytest.mark.parametrize("hw, stride", [(1, 1), (2, 1), (5, 1), (7, 1), (14, 1), (28, 1), (2, 2), (14, 2), (28, 2)])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_span_conv_matches_conv2d(n: int, hw: int, stride: int, density: float) -> None:
    """1x1 convolutions over each plane's interior span: every map width (spans shorter than a
    vector, rounded up into the bottom border, or not), stride 2 on the subsampled input,
    residual, every activation, and the border zero afterwards (the span computes the border
    pixels between rows)."""
    conv = random_conv(20, 40, 1, stride, density, seed=n * 7 + hw)
    x = torch.randn(n, 20, hw, hw, generator=torch.Generator().manual_seed(hw)) * 4
    res = torch.randn(n, 40, hw // stride, hw // stride, generator=torch.Generator().manual_seed(n))
    plain = reference(conv, x, None, False)
    for r, act in ((None, 0), (None, 1), (res, 1), (res, 2), (res, 3), (None, 4), (res, 5), (None, 6)):
        want = plain if r is None else plain + r
        want = apply_activation(want.clone(), ACT_NAMES[act])
        for group, threads, narrow, gemm, rows in ((20, 1, True, False, 0), (3, 2, True, False, 1), (7, 2, False, False, 0),
                                                   (20, 1, True, True, 0), (20, 2, True, True, 0),
                                                   (3, 2, True, False, SpanTile(1, sums=True).flag),
                                                   (20, 1, False, False, SpanTile(3, sums=True).flag)):
            dst = run_span(conv, x, group, threads, r, act, narrow, gemm, rows)
            assert_zero_border(dst)
            assert (to_nchw(dst) - want).abs().max() <= 1e-4, (act, group, threads, narrow, gemm, rows)


def span_tail_vectors(hw: int, n: int, vw: int, block: int) -> int:
    """Whole vectors in the last block of a (hw, hw) map's span at batch n (``span_of`` in C: the
    span rounded up to whole vectors where that stays inside the plane)."""
    floats, row = span_floats(hw, hw, n), (hw + 2) * n
    whole = -(-floats // vw) * vw
    if row + n + whole <= (hw + 2) * row:
        floats = whole
    return (floats % block or block) // vw


@pytest.mark.parametrize("tile", [SpanTile(1), SpanTile(1, sums=True), SpanTile(3)])
def test_span_tails_of_every_width_match_conv2d(tile: SpanTile) -> None:
    """A span's last 1-7 whole vectors run as one tile of that many vectors (SPAN_TAILS): maps
    chosen so that every width occurs, with a residual and an activation: equal to conv2d, the
    border zero."""
    vw = library().vector_width()
    block = tile.block_floats(vw)
    maps = {}
    for hw in range(1, 60):
        for n in (1, 2, 3):
            maps.setdefault(span_tail_vectors(hw, n, vw, block), (hw, n))
    assert set(range(1, 8)) <= set(maps), sorted(maps)
    conv = random_conv(24, 40, 1, 1, 0.4, seed=5)
    for tail in range(1, 8):
        hw, n = maps[tail]
        x = torch.randn(n, 24, hw, hw, generator=torch.Generator().manual_seed(hw))
        res = torch.randn(n, 40, hw, hw, generator=torch.Generator().manual_seed(n))
        want = (reference(conv, x, None, False) + res).clamp(min=0)
        dst = run_span(conv, x, 7, 2, res, 1, rows=tile.flag)
        assert_zero_border(dst)
        assert (to_nchw(dst) - want).abs().max() <= 1e-4, (tail, hw, n)


@pytest.mark.parametrize("tile", [SpanTile(1), SpanTile(2), SpanTile(3), SpanTile(1, sums=True), SpanTile(3, sums=True)])
def test_span_tilings_match_conv2d_over_many_output_channels(tile: SpanTile) -> None:
    """Every span tiling on a layer wide enough that the scratch sums take its output channels
    in several passes (SPAN_SUM_BYTES of them at a time), with groups, a residual and an
    activation: equal to conv2d, the border zero."""
    conv = random_conv(70, 600, 1, 1, 0.2, seed=3)
    x = torch.randn(16, 70, 7, 7, generator=torch.Generator().manual_seed(1))
    res = torch.randn(16, 600, 7, 7, generator=torch.Generator().manual_seed(2))
    want = (reference(conv, x, None, False) + res).clamp(min=0)
    for group, threads in ((9, 2), (70, 1)):
        dst = run_span(conv, x, group, threads, res, 1, rows=tile.flag)
        assert_zero_border(dst)
        assert (to_nchw(dst) - want).abs().max() <= 1e-4, (group, threads)


@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("cin, hw, n", [(1400, 7, 3), (300, 14, 2), (64, 28, 16)])
def test_span_blocks_match_conv2d_run_after_run(cin: int, hw: int, n: int, gemm: bool) -> None:
    """The sparse span and the dense 1x1 kernel, which copy each block of their input before
    use (once per thread for all the chunks it takes of it): a GEMM block of one tile (1400
    input channels), several tiles with a partial last panel, many blocks per thread; equal to
    conv2d, and a second run on new input in the same buffer reads the new input, not the copy
    the first run left."""
    conv = random_conv(cin, 24, 1, 1, 0.3, seed=cin)
    x = torch.randn(n, cin, hw, hw, generator=torch.Generator().manual_seed(hw))
    src, dst = padded_from(x), padded(24, hw, hw, n)
    operands = (gemm_weights(conv),) if gemm else span_operands(conv, 50)  # raw addresses: kept named here
    step = gemm_step(src, *operands, conv.bias, dst, None, 1) if gemm else \
        span_step(src, 24, operands[2], *operands[:2], *operands[3:], conv.bias, dst, None, 1)
    for inp in (x, -x):
        from_nchw(inp, src)
        library().run_steps((Step * 1)(step), 1, 2)
        assert_zero_border(dst)
        assert (to_nchw(dst) - reference(conv, inp, None, 1)).abs().max() <= 1e-3


@pytest.mark.parametrize("act", [1, 2, 3, 4, 5, 6])
def test_activations_match_pytorch_over_their_whole_range(act: int) -> None:
    """Each fused activation (activations.ACTS) through an identity 1x1 convolution, on values from
    -120 to 120 (the exp of SiLU and sigmoid is clamped beyond about +-88) and around the bends: within float
    rounding of PyTorch's in float64."""
    c = 8
    conv = FoldedConv("identity", np.eye(c, dtype=np.float32).reshape(c, c, 1, 1), np.zeros(c, np.float32), 1, 0)
    values = torch.cat([torch.linspace(-120, 120, 4001), torch.linspace(-4, 4, 3001), torch.tensor([0.0, -0.0, 1e-30])])
    x = torch.zeros(c * 80 * 96)
    x[:values.numel()] = values
    x = x.reshape(1, c, 80, 96)
    got = to_nchw(run_span(conv, x, c, 2, None, act)).double()
    want = apply_activation(x.double(), ACT_NAMES[act])
    assert ((got - want).abs() <= 1e-6 * want.abs() + 1e-30).all(), (got - want).abs().max()


def test_residual_and_no_relu() -> None:
    conv = random_conv(16, 16, 3, 1, 0.3, seed=7)
    x = torch.randn(3, 16, 6, 6)
    res = torch.randn(3, 16, 6, 6)
    for relu in (False, True, 2, 3, 4, 5, 6):
        got = run_kernel(conv, x, group=4, threads=2, res=res, relu=relu)
        assert (got - reference(conv, x, res, relu)).abs().max() <= 1e-4, relu
    assert (run_kernel(conv, x, group=4, threads=2, relu=False) < 0).any(), "negative outputs kept without ReLU"


@pytest.mark.parametrize("kind", ["conv", "conv span", "span", "span 3x8", "span sums", "gemm", "winograd", "winograd fused"])
def test_output_written_over_its_residual(kind: str) -> None:
    """Each convolution with its residual's buffer as its output (kernels.h, step_t): equal to
    conv2d plus the residual, with several input-channel groups (whose partial sums pass through
    the output between groups), several threads and a stride-2 sparse layer."""
    wg = kind.startswith("winograd")  # maps that tile by 4, stride 1
    k = 3 if wg or kind.startswith("conv") else 1
    for n, hw, stride in ((3, 8, 1), (16, 4 if wg else 7, 1), (2, 8, 1 if wg or kind == "conv span" else 2),
                          (1, 20 if wg else 5, 1)):
        conv = random_conv(40, 24, k, stride, 0.3, seed=n + hw)
        x = torch.randn(n, 40, hw, hw, generator=torch.Generator().manual_seed(n))
        ho = hw // stride
        res = torch.randn(n, 24, ho, ho, generator=torch.Generator().manual_seed(n + 1))
        want = reference(conv, x, res, 1)
        if kind.startswith("conv"):
            got = run_kernel(conv, x, group=8, threads=2, res=res, relu=True, onto=True, pieces=kind == "conv span")
        elif kind.startswith("winograd"):
            got = run_winograd(conv, x, 2, kind.endswith("fused"), res, True, onto=True)
        else:
            rows = {"span": 1, "span 3x8": 3, "span sums": SpanTile(1, sums=True).flag, "gemm": 0}[kind]
            dst = run_span(conv, x, 8, 2, res, 1, gemm=kind == "gemm", rows=rows, onto=True)
            assert_zero_border(dst)
            got = to_nchw(dst)
        assert (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max())), (kind, n, hw, stride)


def test_group_offsets_cover_every_nonzero_once() -> None:
    conv = random_conv(10, 6, 3, 1, 0.5, seed=3)
    ptr, chan, ngroups, off, val = sparse_operands(conv, 8, 8, 2, group=4)
    assert ngroups == 3 and len(ptr) == 3 * 6 * 9 + 1  # a segment per (group, channel, kernel column, row)
    w = conv.weight
    assert ptr[0] == 0 and ptr[-1] == len(val) == int((w != 0).sum())
    assert (np.diff(ptr) >= 0).all()
    assert chan.tolist() == [0, *np.cumsum((w != 0).reshape(6, -1).sum(1)).tolist()]
    assert chan[1] == 0, "channel 0 has no nonzero"
    for seg in range(len(ptr) - 1):  # each segment holds exactly its group's, channel's and tap's nonzeros
        g, co, kx, ky = seg // 54, seg // 9 % 6, seg // 3 % 3, seg % 3
        part = w[co, 4 * g:4 * g + 4, ky, kx]
        assert ptr[seg + 1] - ptr[seg] == int((part != 0).sum())
        assert sorted(val[ptr[seg]:ptr[seg + 1]].tolist()) == sorted(part[part != 0].tolist())


def test_offsets_are_16_bit_pixels_where_they_fit() -> None:
    conv = random_conv(12, 8, 3, 1, 0.5, seed=4)
    batch32 = sparse_operands(conv, 16, 16, 32, group=12)[3]  # 12 planes of 18*18 pixels of 32 floats
    assert batch32.dtype == np.uint16 and int(batch32.max()) < 12 * 18 * 18
    wide = random_conv(64, 8, 3, 1, 0.5, seed=4)
    large = sparse_operands(wide, 32, 32, 1, group=64)[3]  # 64 planes of 34*34 pixels
    assert large.dtype == np.int32 and int(large.max()) >= 2**16
    assert sparse_operands(conv, 8, 8, 1, group=12, narrow=False)[3].dtype == np.int32


def test_channels_per_group_keeps_a_tile_in_l1() -> None:
    lib = library()
    # batch 32, 16-wide rows, 3x3 stride 1: one 64-float tile reads 3 rows of 128 floats per channel
    g = lib.channels_per_group(16 * 32, 16, 32, 1, 3, 64)
    assert 1 <= g <= 64 and g * 3 * 128 * 4 <= 16 * 1024
    if lib.vector_width() == 8:
        # batch 1, 16-wide rows (AVX2: two vectors): a channel's 8 padded rows of 18 floats are 576 bytes
        assert lib.channels_per_group(16, 16, 1, 1, 3, 256) == 16 * 1024 // 576
    else:
        # AVX-512: a 16-float row is one vector, so one group (seen on the GPU machine's Xeon)
        assert lib.channels_per_group(16, 16, 1, 1, 3, 256) == 256
    assert lib.channels_per_group(16, 16, 1, 1, 3, 20) == 20, "never more than the layer has"
    # batch 1, 2x2 maps: rows of one vector or less are one group (the nonzeros' stream is the cost)
    assert lib.channels_per_group(2, 2, 1, 1, 3, 512) == 512


def run_winograd(conv: FoldedConv, x: torch.Tensor, threads: int, fused: bool, res: torch.Tensor | None = None,
                 relu: bool = True, onto: bool = False) -> torch.Tensor:
    lib = library()
    n, cin, h, w = x.shape
    cout = conv.weight.shape[0]
    src, resbuf = padded_from(x), padded_from(res)
    dst = resbuf if onto else padded(cout, h, w, n)
    # scratch full of NaN: a product of an unwritten padding column must never reach the output
    scratch = None if fused else np.full(lib.winograd_scratch_floats(cin, h, w, n), np.nan, dtype=np.float32)
    u, bias = winograd_weights(conv), conv.bias
    steps = winograd_steps(src, scratch, u, bias, dst, resbuf, relu)
    lib.run_steps((Step * len(steps))(*steps), len(steps), threads)
    assert_zero_border(dst)
    return to_nchw(dst)


def winograd_tolerance(want: torch.Tensor) -> float:
    """F(4x4, 3x3) in fp32 rounds about 10x more than a direct convolution (its transforms
    multiply by up to 8 and divide by 24); measured ~1e-5 of the largest output here."""
    return 5e-5 * float(want.abs().max()) + 1e-6


@pytest.mark.parametrize("n", [1, 2, 7, 8, 13, 32])
@pytest.mark.parametrize("hw", [20, 16, 8, 4])  # 25 tiles: at batch 1 a vector of tiles part full
@pytest.mark.parametrize("fused", [False, True])
def test_winograd_matches_conv2d(n: int, hw: int, fused: bool) -> None:
    conv = random_conv(20, 24, 3, 1, 0.6, seed=n * 10 + hw)
    x = torch.randn(n, 20, hw, hw, generator=torch.Generator().manual_seed(n))
    res = torch.randn(n, 24, hw, hw, generator=torch.Generator().manual_seed(n + 1))
    exact = conv.__class__(conv.name, conv.weight.astype(np.float64), conv.bias.astype(np.float64), 1, 1)
    for r, relu in ((None, True), (res, True), (res, False), (res, 2), (res, 3), (None, 4), (res, 5), (None, 6)):
        want = reference(exact, x.double(), None if r is None else r.double(), relu)
        # rounding happens before the activation, whose slope is at most 1.5 (hardswish): a
        # sigmoid's outputs are at most 1 whatever the size of the sums it rounds
        tol = 1.5 * winograd_tolerance(reference(exact, x.double(), None if r is None else r.double(), False))
        for threads in (1, 2):
            got = run_winograd(conv, x, threads, fused, r, relu)
            assert (got.double() - want).abs().max() <= tol, (threads, relu, r is None)


@pytest.mark.parametrize("fused", [False, True])
def test_winograd_at_batch_1_over_two_panels(fused: bool) -> None:
    """Batch 1 transforms a vector of tiles at a time (winograd.c, wg_in_tiles): 28x28 is 49
    tiles, more than one GEMM panel of three AVX-512 vectors, the last vector one tile."""
    conv = random_conv(12, 8, 3, 1, 0.6, seed=28)
    x = torch.randn(1, 12, 28, 28, generator=torch.Generator().manual_seed(28))
    res = torch.randn(1, 8, 28, 28, generator=torch.Generator().manual_seed(29))
    want = reference(conv.__class__(conv.name, conv.weight.astype(np.float64), conv.bias.astype(np.float64), 1, 1),
                     x.double(), res.double(), True)
    for threads in (1, 2):
        got = run_winograd(conv, x, threads, fused, res, True)
        assert (got.double() - want).abs().max() <= winograd_tolerance(want), threads


def test_winograd_weights_are_g_g_gt_packed_by_four_output_channels() -> None:
    conv = random_conv(6, 8, 3, 1, 0.7, seed=11)
    u = winograd_weights(conv)
    assert u.shape == (36, 2, 6, 4) and u.dtype == np.float32
    g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
    co, ci = 5, 3
    want = g @ conv.weight[co, ci].astype(np.float64) @ g.T
    assert np.allclose(u[:, co // 4, ci, co % 4].reshape(6, 6), want, rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match="multiple of 4"):
        winograd_weights(random_conv(6, 6, 3, 1, 0.7, seed=1))


def test_winograd_covers_only_3x3_stride_1_maps_that_tile_by_4() -> None:
    def conv(cin: int, k: int, stride: int) -> FoldedConv:
        return FoldedConv("c", np.ones((8, cin, k, k), np.float32), np.zeros(8, np.float32), stride, 1 if k == 3 else 0)

    assert winograd_eligible(conv(64, 3, 1), 16, 16) and winograd_eligible(conv(64, 3, 1), 4, 4)
    assert not winograd_eligible(conv(64, 3, 2), 16, 16), "stride 2"
    assert not winograd_eligible(conv(64, 1, 1), 16, 16), "1x1"
    assert not winograd_eligible(conv(64, 3, 1), 2, 2), "layer4's 2x2 maps"
    assert not winograd_eligible(conv(3, 3, 1), 32, 32), "the stem's 3 input channels"


def test_winograd_scratch_and_panels() -> None:
    lib = library()
    vw = lib.vector_width()
    assert vw in (8, 16)
    # batch 32, 16x16 map: 16 tiles x 32 columns, 36 transform points, one padding line each
    assert lib.winograd_scratch_floats(64, 16, 16, 32) == 36 * (64 * 512 + 16)
    assert lib.winograd_panels(16, 16, 32) == -(-512 // (3 * vw))
    # batch 250 takes whole vectors per tile; batch 1 one column per tile, rounded to a vector
    assert lib.winograd_panels(4, 4, 250) == -(-(-(-250 // vw) * vw) // (3 * vw))
    assert lib.winograd_scratch_floats(8, 16, 16, 1) == 36 * (8 * 16 + 16)


def run_conv_pool(conv: FoldedConv, x: torch.Tensor, group: int, threads: int) -> torch.Tensor:
    lib = library()
    n, _, h, w = x.shape
    cout = conv.weight.shape[0]
    src, dst = padded_from(x), padded(cout, h // 2, w // 2, n)
    ptr, chan, ngroups, off, val = sparse_operands(conv, h, w, n, group)
    step = conv_pool_step(src, h, w, cout, ngroups, ptr, chan, off, val, conv.bias, dst, (3, 1, 1, h, w))
    lib.run_steps((Step * 1)(step), 1, threads)
    assert_zero_border(dst)
    return to_nchw(dst)


@pytest.mark.parametrize("n", [32, 8, 5, 2, 1])  # large first: a thread's buffer is reused by smaller batches
@pytest.mark.parametrize("density", [0.0, 0.3, 0.9])
def test_conv_pool_matches_conv2d_relu_maxpool(n: int, density: float) -> None:
    conv = random_conv(3, 16, 3, 1, density, seed=n + 1)
    x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(n))
    want = F.max_pool2d(reference(conv, x, None, True), 3, 2, 1)
    for group in (1, 3):
        for threads in (1, 2):
            got = run_conv_pool(conv, x, group, threads)
            assert got.shape == want.shape and (got - want).abs().max() <= 1e-4, (group, threads)


def run_stem_pool(conv: FoldedConv, x: torch.Tensor, group: int, threads: int, direct: bool) -> torch.Tensor:
    """A 224-pixel ResNet's stem shape (7x7, stride 2, padding 3, read from an input packed with
    a 3-pixel border) with the max pool, through phase planes or ``direct``ly."""
    n, cin, h, w = x.shape
    cout, ho = conv.weight.shape[0], h // 2
    src = padded(cin, h, w, n, border=3)
    src[:, 3:-3, 3:-3, :] = x.permute(1, 2, 3, 0).numpy()
    dst = padded(cout, ho // 2, ho // 2, n)
    ptr, chan, ngroups, off, val = sparse_operands(conv, h, w, n, group, border=3, direct=direct)
    steps, base = [], src
    if not direct:
        base = np.empty((4 * cin, (h + 6) // 2, (w + 6) // 2, n), dtype=np.float32)
        steps.append(split_step(src, base))
    steps.append(conv_pool_step(base, ho, ho, cout, ngroups, ptr, chan, off, val, conv.bias, dst, (7, 2, 3, h, w), direct))
    library().run_steps((Step * len(steps))(*steps), len(steps), threads)
    assert_zero_border(dst)
    return to_nchw(dst)


@pytest.mark.parametrize("n, direct", [(1, False), (3, False), (16, False), (16, True), (32, True), (8, True)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.6])
def test_stride_2_stem_and_pool_match_conv2d_relu_maxpool(n: int, direct: bool, density: float) -> None:
    vw = library().vector_width()
    if direct and n not in (vw, 2 * vw):
        pytest.skip(f"direct stride 2 needs a batch of {vw} or {2 * vw}")
    g = torch.Generator().manual_seed(n)
    weight = torch.randn(16, 3, 7, 7, generator=g)
    weight[torch.rand(weight.shape, generator=g) >= density] = 0
    conv = FoldedConv("stem", weight.numpy(), torch.randn(16, generator=g).numpy(), 2, 3)
    x = torch.randn(n, 3, 28, 28, generator=g)
    want = F.max_pool2d(reference(conv, x, None, True), 3, 2, 1)
    for group, threads in ((3, 1), (1, 2)):
        got = run_stem_pool(conv, x, group, threads, direct)
        assert got.shape == want.shape and (got - want).abs().max() <= 1e-4, (group, threads)


def test_a_convolution_pools_only_an_even_map_into_its_half() -> None:
    conv = random_conv(3, 4, 3, 1, 0.5, seed=1)
    src, dst = padded(3, 6, 6, 1), padded(4, 4, 4, 1)
    ptr, chan, ngroups, off, val = sparse_operands(conv, 6, 6, 1, 3)
    with pytest.raises(ValueError, match="pools into"):
        conv_pool_step(src, 6, 6, 4, ngroups, ptr, chan, off, val, conv.bias, dst, (3, 1, 1, 6, 6))


@pytest.mark.parametrize("n,c,h,w,border,threads", [(1, 3, 5, 7, 1, 1), (3, 2, 4, 19, 3, 2), (16, 3, 6, 33, 1, 2)])
def test_pack_moves_each_image_into_the_padded_layout(n: int, c: int, h: int, w: int, border: int, threads: int) -> None:
    from cnnprune.kernels import PACK

    x = np.random.default_rng(n).standard_normal((n, c, h, w), dtype=np.float32)
    dst = padded(c, h, w, n, border=border)
    step = Step(kind=PACK, src=x.ctypes.data, N=n, C=c, H=h, W=w, pad=border, dst=dst.ctypes.data)
    library().run_steps((Step * 1)(step), 1, threads)
    want = np.pad(x.transpose(1, 2, 3, 0), ((0, 0), (border, border), (border, border), (0, 0)))
    assert np.array_equal(dst, want), "every pixel moved, the border left zero"


@pytest.mark.parametrize("n, h, w", [(1, 7, 7), (1, 5, 19), (1, 56, 56), (3, 4, 9), (16, 7, 7), (70, 3, 5)])
def test_global_average_pool_is_each_channels_mean(n: int, h: int, w: int) -> None:
    from cnnprune.kernels import AVGPOOL

    x = torch.randn(n, 10, h, w, generator=torch.Generator().manual_seed(h * w))
    out = np.full((n, 10), np.nan, dtype=np.float32)
    src = padded_from(x)
    step = Step(kind=AVGPOOL, src=src.ctypes.data, C=10, H=h, W=w, N=n, dst=out.ctypes.data)
    library().run_steps((Step * 1)(step), 1, 2)
    assert np.allclose(out, x.mean((2, 3)).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, sb, db", [(1, 1, 2), (3, 3, 1), (16, 1, 3)])
def test_repad_copies_the_interior_into_another_border(n: int, sb: int, db: int) -> None:
    from cnnprune.kernels import REPAD

    x = np.random.default_rng(n).standard_normal((5, 6, 7, n), dtype=np.float32)
    src, dst = padded(5, 6, 7, n, border=sb), padded(5, 6, 7, n, border=db)
    src[:, sb:-sb, sb:-sb] = x
    step = Step(kind=REPAD, src=src.ctypes.data, C=5, H=6, W=7, N=n, k=sb, pad=db, dst=dst.ctypes.data)
    library().run_steps((Step * 1)(step), 1, 2)
    assert np.array_equal(dst, np.pad(x, ((0, 0), (db, db), (db, db), (0, 0))))


@pytest.mark.parametrize("n", [1, 3, 16, 70])  # 70: images in two blocks of the kernel's lanes
@pytest.mark.parametrize("native", [False, True])
def test_scale_multiplies_each_channel_of_each_image(n: int, native: bool) -> None:
    """Factors from an (N, C) array, or from the interior pixel of a padded (C, 1, 1) map."""
    from cnnprune.kernels import SCALE

    x = torch.randn(n, 6, 5, 4)
    factors = torch.rand(n, 6, 1, 1, generator=torch.Generator().manual_seed(n))
    src, dst = padded_from(x), padded(6, 5, 4, n)
    if native:
        held = padded_from(factors)
        at, per_image, per_channel = held.ctypes.data + 4 * n * 4, 1, 9 * n
    else:
        held = np.ascontiguousarray(factors.reshape(n, 6).numpy())
        at, per_image, per_channel = held.ctypes.data, 6, 1
    step = Step(kind=SCALE, src=src.ctypes.data, C=6, H=5, W=4, N=n, val=at, stride=per_image, src_row=per_channel,
                dst=dst.ctypes.data)
    library().run_steps((Step * 1)(step), 1, 2)
    assert_zero_border(dst)
    assert torch.equal(to_nchw(dst), x * factors)


@pytest.mark.parametrize("k, pad, hw", [(3, 1, 8), (3, 1, 7), (3, 1, 2), (3, 1, 30), (1, 0, 8), (7, 3, 12), (5, 2, 9)])
@pytest.mark.parametrize("density", [0.05, 0.6, 1.0])
@pytest.mark.parametrize("vectors", [1, 2])
def test_direct_stride_2_matches_conv2d(k: int, pad: int, hw: int, density: float, vectors: int) -> None:
    """Stride 2 without phase planes, at a batch of one or two vectors per pixel: every tile
    width and row count, border taps skipped, the input's border as wide as its padding (a stem)."""
    n, border = vectors * library().vector_width(), max(1, pad)
    base = random_conv(6, 24, k, 2, density, seed=hw * 10 + k)
    conv = FoldedConv("c", base.weight, base.bias, 2, pad)
    x = torch.randn(n, 6, hw, hw, generator=torch.Generator().manual_seed(hw))
    want = reference(conv, x, None, True)
    src = padded(6, hw, hw, n, border=border)
    src[:, border:-border, border:-border, :] = x.permute(1, 2, 3, 0).numpy()
    ho = (hw + 2 * pad - k) // 2 + 1
    for group in (1, 4):
        for threads in (1, 2):
            dst = padded(24, ho, ho, n)
            ptr, chan, ngroups, off, val = sparse_operands(conv, hw, hw, n, group, border=border, direct=True)
            step = conv_step(src, ho, ho, 24, ngroups, ptr, chan, off, val, conv.bias, dst, None, True,
                             (k, 2, pad, hw, hw), direct=True)
            library().run_steps((Step * 1)(step), 1, threads)
            assert (to_nchw(dst) - want).abs().max() <= 1e-4, (group, threads)
            assert_zero_border(dst)


@pytest.mark.parametrize("vectors", [0.5, 3])
def test_direct_stride_2_needs_one_or_two_vectors_per_pixel(vectors: float) -> None:
    conv = random_conv(4, 8, 3, 2, 0.5, seed=1)
    n = int(library().vector_width() * vectors)
    src, dst = padded(4, 8, 8, n), padded(8, 4, 4, n)
    ptr, chan, ngroups, off, val = sparse_operands(conv, 8, 8, n, 4, direct=True)
    with pytest.raises(ValueError, match="batch of"):
        conv_step(src, 4, 4, 8, ngroups, ptr, chan, off, val, conv.bias, dst, None, True, (3, 2, 1, 8, 8), direct=True)


def test_a_failing_compile_is_one_line_and_leaves_nothing(tmp_path) -> None:
    import stat

    from cnnprune import kernels
    from cnnprune.errors import CnnpruneError

    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'note: compiling' >&2\necho 'tiles_s1.c:3: error: boom' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "lib" / "k.so"
    out.parent.mkdir()
    sources = [str(kernels._source_folder() / name) for name in kernels.SOURCES if name.endswith(".c")]
    with pytest.raises(CnnpruneError, match=r"failed: tiles_s1.c:3: error: boom$"):
        kernels._build(str(cc), sources, str(out), kernels._source_folder())
    assert list(out.parent.iterdir()) == [], "no object files or library left behind"


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 33])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
def test_a_linear_step_in_csr_matches_the_dense_one(n: int, density: float) -> None:
    """Every batch size (gathered at 1, VW images a multiply-add above, a partial last vector),
    rows without nonzeros, activations."""
    rng = np.random.default_rng(n)
    c, cout = 70, 37
    w = (rng.standard_normal((cout, c)) * (rng.random((cout, c)) < density)).astype(np.float32)
    b, x = rng.standard_normal(cout).astype(np.float32), rng.standard_normal((n, c)).astype(np.float32)
    w[3] = 0
    csr = linear_operands(w)
    for act in (0, 1, 4):
        outs = []
        for form in (None, csr):
            out = np.full((n, cout), np.nan, np.float32)
            library().run_steps((Step * 1)(linear_step(x, w, b, out, act, form)), 1, 2)
            outs.append(out)
        want = apply_activation(torch.from_numpy(x @ w.T + b), ACT_NAMES[act]).numpy()
        for out in outs:
            assert np.abs(out - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_a_linear_step_refuses_operands_of_another_shape() -> None:
    w = np.eye(4, 6, dtype=np.float32)
    x, b, out = np.zeros((2, 6), np.float32), np.zeros(4, np.float32), np.zeros((2, 4), np.float32)
    ptr, idx, val = linear_operands(w)
    for args in ((x, w.T.copy(), b, out), (x, w.astype(np.float64), b, out), (x, np.asfortranarray(w), b, out)):
        with pytest.raises(ValueError, match="a linear step takes"):
            linear_step(*args)
    unordered = ptr.copy()
    unordered[1] = ptr[-1] + 5  # a row reaching past the nonzeros, the next one back
    for bad in ((ptr[:-1], idx, val), (ptr, idx + 6, val), (ptr.astype(np.int64), idx, val), (unordered, idx, val),
                (ptr, idx, val.astype(np.float64)), (ptr, np.repeat(idx, 2)[::2], val)):
        with pytest.raises(ValueError, match="sparse linear step takes"):
            linear_step(x, w, b, out, csr=bad)
