"""The huge-page arena: zeroed, aligned, writable, independent arrays of any size."""

from __future__ import annotations

import numpy as np

from cnnprune.buffers import ALIGN, Arena


def test_arrays_are_zero_aligned_writable_and_do_not_overlap() -> None:
    arena = Arena(chunk=1 << 20)
    shapes = [(3, 34, 34, 1), (64, 18, 18, 32), (5,), (0, 4), (7, 3)]
    arrays = [arena.zeros(s) for s in shapes]
    for a, s in zip(arrays, shapes):
        assert a.shape == s and a.dtype == np.float32 and a.flags.writeable and not a.any()
        assert a.size == 0 or a.ctypes.data % ALIGN == 0
    for i, a in enumerate(arrays):
        a[...] = i + 1
    for i, a in enumerate(arrays):
        assert (a == i + 1).all(), "an array was overwritten by another one"
    assert arena.zeros((2,), np.int32).dtype == np.int32


def test_arrays_outlive_the_arena() -> None:
    a = Arena().zeros((1000,))
    a[:] = 3.0
    assert float(a.sum()) == 3000.0


def test_a_rewound_arena_cuts_the_same_memory_again_zero_only_where_never_written() -> None:
    arena = Arena(chunk=1 << 20, touch=True)
    first = arena.zeros((1000,))
    first[:] = 7.0
    arena.rewind()
    again = arena.zeros((1500,))  # the first 1000 floats are the same memory, the rest fresh
    assert again.ctypes.data == first.ctypes.data
    assert (again[:1000] == 7.0).all() and not again[1000:].any()
    assert (arena.zeros((10,)) == 0).all()  # past every earlier array: zero
