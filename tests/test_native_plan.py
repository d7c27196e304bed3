"""How the native engine sizes the input-channel groups of a 1x1 span convolution."""
import numpy as np
import pytest

from cnnprune.fold import FoldedConv
from cnnprune.kernels import library
from cnnprune.native_plan import SPAN_GROUP_BYTES, SPAN_LEAST_BYTES, SPAN_MIN_RUN, SPAN_ROWS, group_size


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
