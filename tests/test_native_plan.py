"""How the native engine sizes the input-channel groups of a span convolution (1x1, or 3x3 over
the span), and which tilings of it calibration times."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnprune.fold import FoldedConv
from cnnprune.kernels import library
from cnnprune.native_plan import (
    CONV_SPAN_GROUP_BYTES,
    SPAN_GROUP_BYTES,
    SPAN_LEAST_BYTES,
    SPAN_MIN_RUN,
    SPAN_ROWS,
    SPAN_SUM_GROUP_BYTES,
    SPARSE_LINEAR_DENSITY,
    ConvPlan,
    SpanTile,
    conv_span_offered,
    group_size,
    linear_operands,
    span_floats,
    span_tiles,
    sparse_linear,
)


def conv_1x1(cin: int, cout: int, density: float) -> FoldedConv:
    rng = np.random.default_rng(cin + cout)
    weight = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    weight[rng.random(weight.shape) >= density] = 0
    return FoldedConv("c", weight, np.zeros(cout, np.float32), 1, 0)


@pytest.mark.parametrize("cin, density", [(64, 0.7), (512, 0.6), (1024, 0.3), (1024, 0.15), (2048, 0.04), (4096, 0.01)])
@pytest.mark.parametrize("hw, n", [(7, 1), (14, 16), (56, 16)])
def test_span_groups_fill_l1_and_stay_within_l2(cin: int, density: float, hw: int, n: int) -> None:
    """A group holds at least SPAN_LEAST_BYTES of the copied block (all channels where fewer),
    sparser layers get larger groups, and none outgrows SPAN_GROUP_BYTES but to give each output
    channel SPAN_MIN_RUN nonzeros."""
    lib = library()
    vw = lib.vector_width()
    span_floats = (hw - 1) * (hw + 2) * n + hw * n
    block = min(span_floats, 8 * vw * SPAN_ROWS[vw]) * 4
    conv = conv_1x1(cin, 256, density)
    group = group_size(lib, conv, hw * n, hw, n, span=True)
    assert 1 <= group <= cin
    assert group >= min(cin, SPAN_LEAST_BYTES // block)
    # beyond SPAN_GROUP_BYTES only where SPAN_MIN_RUN nonzeros a channel need it
    assert group * block <= SPAN_GROUP_BYTES or conv.nnz * (group - 1) < SPAN_MIN_RUN * 256 * cin
    sparser = group_size(lib, conv_1x1(cin, 256, density / 4), hw * n, hw, n, span=True)
    assert sparser >= group


@pytest.mark.parametrize("vw", [8, 16])
@pytest.mark.parametrize("hw, n, cin", [(7, 1, 2048), (14, 1, 256), (56, 1, 64), (14, 16, 1024), (56, 16, 64), (1, 1, 8)])
def test_span_tilings_are_distinct_and_fit_the_span(vw: int, hw: int, n: int, cin: int) -> None:
    """The default tiling first; no tiling with more pieces than the span fills (it would run as
    fewer); scratch sums only where their L1-sized groups cut the input channels; every tiling
    once, and each survives its flag."""
    floats = span_floats(hw, hw, n)
    tiles = span_tiles(vw, floats, cin)
    assert len(set(tiles)) == len(tiles) and tiles[0].pieces <= SPAN_ROWS[vw] and not tiles[0].sums
    assert all((t.pieces - 1) * 8 * vw < floats or t.pieces == 1 for t in tiles)
    assert (SpanTile(1, sums=True) in tiles) == (SPAN_SUM_GROUP_BYTES // (min(floats, 8 * vw) * 4) < cin)
    assert all(SpanTile.from_flag(t.flag) == t for t in tiles)


def test_scratch_sums_take_l1_sized_groups() -> None:
    lib = library()
    vw = lib.vector_width()
    conv = conv_1x1(1024, 64, 0.1)
    group = group_size(lib, conv, 14 * 16, 14, 16, span=True, tile=SpanTile(1, sums=True))
    assert group == SPAN_SUM_GROUP_BYTES // (8 * vw * 4)
    assert group_size(lib, conv, 14 * 16, 14, 16, span=True, tile=SpanTile(1)) > group


def conv_3x3(cin: int, cout: int, density: float, stride: int = 1, pad: int = 1) -> FoldedConv:
    rng = np.random.default_rng(cin + cout)
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    weight[rng.random(weight.shape) >= density] = 0
    return FoldedConv("c", weight, np.zeros(cout, np.float32), stride, pad)


@pytest.mark.parametrize("hw, n, vw, offered", [(14, 1, 16, True), (7, 1, 16, True), (28, 1, 16, True), (56, 1, 16, True),
                                                (16, 1, 16, False), (14, 16, 16, False), (14, 8, 8, False),
                                                (6, 1, 8, True), (8, 1, 16, False), (2, 1, 16, False)])
def test_a_3x3_layer_is_timed_over_the_span_where_row_tiles_cut_a_row_in_pieces(hw: int, n: int, vw: int,
                                                                                 offered: bool) -> None:
    conv = conv_3x3(8, 8, 0.5)
    assert conv_span_offered(ConvPlan(conv, hw, hw, hw, hw), n, vw) == offered
    p = ConvPlan(conv, hw, hw, hw, hw, conv_span=offered)
    assert p.tilings(n, vw) == ((None, SpanTile(1)) if offered else (None,)) and p.tiled == offered


@pytest.mark.parametrize("hw, stride, pad, border", [(13, 2, 1, 1), (14, 1, 0, 1), (14, 1, 1, 2)])
def test_no_span_where_input_and_output_planes_differ(hw: int, stride: int, pad: int, border: int) -> None:
    """Not for an odd map at stride 2 (no phase planes in the output's geometry), no padding, a
    wider border."""
    ho = (hw + 2 * pad - 3) // stride + 1
    assert not conv_span_offered(ConvPlan(conv_3x3(8, 8, 0.5, stride, pad), hw, hw, ho, ho, border=border), 1, 16)


@pytest.mark.parametrize("hw, n, direct, offered", [(28, 1, False, True), (56, 1, False, True), (14, 1, False, True),
                                                    (32, 1, False, False), (28, 16, True, False)])
def test_a_stride_2_layer_is_timed_over_the_span_of_its_phase_planes(hw: int, n: int, direct: bool, offered: bool) -> None:
    """Where its output rows are cut in pieces and it reads phase planes (not its input directly);
    its phase planes are then a row and a column wider, for every tiling."""
    p = ConvPlan(conv_3x3(8, 8, 0.5, 2, 1), hw, hw, hw // 2, hw // 2, direct=direct)
    p.conv_span = conv_span_offered(p, n, 16)
    assert p.conv_span == offered
    assert p.phase_shape(n) == (32, hw // 2 + 1 + offered, hw // 2 + 1 + offered, n)


@pytest.mark.parametrize("cin, density, hw", [(256, 0.03, 14), (128, 0.125, 28), (512, 0.002, 7), (64, 0.9, 56)])
def test_span_3x3_groups_keep_their_block_in_l1_unless_too_sparse(cin: int, density: float, hw: int) -> None:
    """The input a block of the span reads from a group (its floats plus the two rows its taps
    reach) fits CONV_SPAN_GROUP_BYTES, widened only to give each output channel 32 nonzeros."""
    lib = library()
    conv = conv_3x3(cin, 64, density)
    group = group_size(lib, conv, hw, hw, 1, tile=SpanTile(1))
    reach = min(span_floats(hw, hw, 1), 8 * lib.vector_width()) + 2 * (hw + 2)
    assert 1 <= group <= cin
    assert group * reach * 4 <= CONV_SPAN_GROUP_BYTES or conv.nnz * (group - 1) < 32 * 64 * cin


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**16))
def test_a_linear_weight_in_csr_holds_every_nonzero_in_row_order(cout: int, c: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, c)) * (rng.random((cout, c)) < density)).astype(np.float32)
    ptr, idx, val = linear_operands(w)
    assert ptr.dtype == idx.dtype == np.int32 and val.dtype == np.float32 and ptr.shape == (cout + 1,)
    back = np.zeros_like(w)
    for k in range(cout):
        cols = idx[ptr[k]:ptr[k + 1]]
        assert np.all(np.diff(cols) > 0)
        back[k, cols] = val[ptr[k]:ptr[k + 1]]
    assert np.array_equal(back, w) and not np.any(val == 0)


def test_a_linear_layer_runs_in_csr_up_to_its_batch_sizes_density() -> None:
    w = np.zeros((10, 10), np.float32)
    w.flat[:int(SPARSE_LINEAR_DENSITY[0] * 100)] = 1
    assert sparse_linear(w, 1) and sparse_linear(w, 16)
    w.flat[:int(SPARSE_LINEAR_DENSITY[1] * 100)] = 1
    assert not sparse_linear(w, 1) and sparse_linear(w, 2)
    w[:] = 1
    assert not sparse_linear(w, 16)
