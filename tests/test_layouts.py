"""The layouts in numpy: every encoder's entries (decode_coo) are the weight's nonzeros, and
hostile index arrays are refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cnnprune import layouts
from cnnprune.errors import CnnpruneError

ENCODERS = [layouts.encode_csr, layouts.encode_delta8, layouts.encode_bitmask, layouts.encode_dense, layouts.encode]


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5), st.sampled_from([1, 3]), st.sampled_from([1, 3])),
              elements=st.sampled_from([0.0, 0.0, 0.0, 1.5, -2.0, 3.25])))
def test_entries_are_the_nonzeros_for_every_layout(w: np.ndarray) -> None:
    for encoder in ENCODERS:
        enc = encoder(w)
        rows, cols, values = layouts.decode_coo(enc)
        m = np.zeros((w.shape[0], w[0].size), np.float32)
        m[rows, cols] = values
        assert np.array_equal(m.reshape(w.shape), w) and layouts.decode(enc).tobytes() == w.tobytes()


def test_repeated_or_unsorted_columns_are_refused() -> None:
    w = np.zeros((2, 8), np.float32)
    w[0, [1, 5]] = 1.0
    enc = layouts.encode_csr(w)
    enc.arrays["col_indices"] = np.array([5, 1], dtype=np.uint8)
    with pytest.raises(CnnpruneError, match="duplicate or unsorted"):
        layouts.decode_coo(enc, "w")
    enc.arrays["col_indices"] = np.array([1, 9], dtype=np.uint8)
    with pytest.raises(CnnpruneError, match="out of range"):
        layouts.decode(enc, "w")
    enc.arrays["values"] = np.array([1, 2])
    with pytest.raises(CnnpruneError, match="floating-point"):
        layouts.decode(enc, "w")
