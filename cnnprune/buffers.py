"""Activation buffers of the native sparse engine, on transparent huge pages where Linux offers them,
and the pool that hands them out again within one forward pass (``BufferPool``).

Why: at batch 32 one layer's activations span megabytes (layer1: 64 planes of 41.5 KB), and a
register tile of the sparse kernel reads about ten input planes and writes up to 64 output
planes, each on its own 4 KiB pages: more pages than the first-level TLB holds. Carving the
buffers from mappings advised ``MADV_HUGEPAGE`` (2 MiB pages; this machine's THP mode is
``madvise``, so plain allocations never get them) cuts those misses; the README gives the
measured gain. Where madvise or huge pages are unavailable the mapping simply uses normal pages.
"""

from __future__ import annotations

import mmap

import numpy as np

HUGE_PAGE = 2 << 20
ALIGN = 64
# Bytes of mapped memory that follow every array: the span convolution's last vector may read up
# to a vector past its input (``kernels.SPAN_ROUND``)
SLACK = 64


# Bytes of the mapping that per-layer timing cuts each layer's maps from, again for every layer
# (``Arena.rewind``): ResNet-50's largest layer at 224 px and batch 16 takes ~220 MB
CALIBRATION_CHUNK = 512 << 20


class Arena:
    """Zeroed arrays carved one after another from anonymous mappings of at least ``chunk``
    bytes, each advised to use huge pages. Nothing is freed before the arena and every array
    cut from it are gone (arrays keep their mapping alive), so one arena serves one plan.
    ``touch``: write each array once as it is cut, so that its pages are faulted in then and not
    by the first call that writes it (calibration times such calls: ``timing.best_ms``); with
    ``rewind``, memory is faulted in once for all the layers that calibration times in turn."""

    def __init__(self, chunk: int = 8 << 20, touch: bool = False) -> None:
        self.chunk = chunk
        self.touch = touch
        self._touched = 0  # bytes of the newest mapping written since it was made
        self._map: mmap.mmap | None = None
        self._base = 0
        self._used = 0
        self._size = 0

    def _new_map(self, nbytes: int) -> None:
        size = max(self.chunk, nbytes + SLACK) + HUGE_PAGE
        m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None:
            try:
                m.madvise(advice)
            except OSError:
                pass
        address = np.frombuffer(m, dtype=np.uint8, count=1).ctypes.data
        self._map, self._base = m, (-address) % HUGE_PAGE
        self._used, self._size, self._touched = 0, size - self._base, 0

    def rewind(self) -> None:
        """Cut the next arrays from the start of the newest mapping again, for a caller that
        holds none of the arrays cut so far (calibration, between layers): faulting fresh pages
        in took 0.67 s of ResNet-50's per-layer timing at 224 and batch 16, and single fresh
        256 MB fills 50-900 ms where a second fill took 35-40 ms. Arrays cut after a rewind
        hold what earlier ones held where those were touched, not zeros: for timing only."""
        self._used = 0

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        """A 64-byte aligned, writable array, zero-filled (fresh anonymous memory is zero) unless
        cut after a ``rewind``, followed by at least ``SLACK`` bytes of its mapping."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes == 0:
            return np.zeros(shape, dtype)
        if self._map is None or self._used + nbytes + SLACK > self._size:
            self._new_map(nbytes)
        start = self._base + self._used
        self._used += -(-nbytes // ALIGN) * ALIGN
        a = np.frombuffer(self._map, dtype=np.uint8, count=nbytes, offset=start).view(dtype).reshape(shape)
        if self.touch and start + nbytes > self._touched:
            fresh = max(self._touched - start, 0)  # bytes of a already written: keep them
            a.reshape(-1).view(np.uint8)[fresh:] = 0
            self._touched = start + nbytes
        return a


def release_free_memory() -> None:
    """Give the C heap's free memory back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Planning frees tens of MB of temporaries, and glibc keeps large freed blocks
    in the heap once its adaptive mmap threshold has risen: without this they stay resident."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class BufferPool:
    """Activation buffers of one forward pass, handed out again once their last reader has run
    (the steps run in program order): at batch 32 a buffer per layer output made ~35 MB of
    activations, beside the weights, on a 32 MB L3 cache; reused, far fewer (the README gives the
    measured sizes and gain). Padded buffers are only reused as padded
    buffers of the same shape, whose writers touch interiors only, so their borders stay zero;
    phase planes are rewritten by each split wherever an interior output reads them (a span
    convolution's extra row and column, ``native_plan.phase_dims``, are never written)."""

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

    def padded(self, c: int, h: int, w: int, n: int, border: int = 1) -> np.ndarray:
        return self._take(("padded", (c, h + 2 * border, w + 2 * border, n)))

    def phase(self, shape: tuple[int, int, int, int]) -> np.ndarray:
        """The 4 phase planes, (4c, hh, wh, n), that a stride-2 convolution reads."""
        return self._take(("phase", tuple(shape)))

    def give(self, *buffers: np.ndarray | None) -> None:
        """Return buffers whose last reader is already in the program (repeats and None ignored)."""
        for b in buffers:
            key = self._key.pop(id(b), None) if b is not None else None
            if key is not None:
                self._free.setdefault(key, []).append(b)
