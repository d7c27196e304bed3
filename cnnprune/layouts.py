"""The lossless sparse layouts of one conv or linear weight, in numpy (no torch: the runtime
reads them too). Both file forms hold them: ``.csr.pt`` (:mod:`cnnprune.csr`) and
``.csr.safetensors`` (:mod:`cnnprune.csrfile`).

The weight is viewed as a matrix (rows = out channels, columns = in·kh·kw) and stored in
whichever layout is smallest, so no file is ever larger than its dense form:

- ``"csr"``: ``crow_indices``, ``col_indices``, ``values`` (index dtypes as small as stays
  lossless; the textbook layout);
- ``"csr-delta8"``: ``crow_indices``, ``values`` and ``col_deltas``, one uint8 per nonzero
  holding the gap to the previous nonzero of the same row (255 = skip 255 columns, no value),
  about half the size of 16-bit columns;
- ``"bitmask"``: ``mask`` (one bit per weight, ``numpy.packbits`` order) and ``values``;
- ``"dense"``: ``values``, the plain array (where pruning left too few zeros for any layout
  above to be smaller).

Decoding gives back the dense array bit for bit and validates every index against the shape
before it writes anything. Pruned weights are stored as +0.0: the pruning step canonicalises
the −0.0 that ``weight * mask`` leaves for negative weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnprune.errors import CnnpruneError

LAYOUTS = ("csr", "csr-delta8", "bitmask", "dense")
# the arrays each layout holds besides its shape
PARTS = {"csr": ("crow_indices", "col_indices", "values"), "csr-delta8": ("crow_indices", "col_deltas", "values"),
         "bitmask": ("mask", "values"), "dense": ("values",)}
INDEX_DTYPES = (np.uint8, np.int16, np.int32, np.int64)
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclass
class Encoded:
    """One weight in one layout: its dense ``shape`` and the arrays ``PARTS[layout]`` names."""

    layout: str
    shape: tuple[int, ...]
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def min_uint(max_value: int) -> type:
    """Smallest integer dtype that holds 0..max_value losslessly (int16, not uint16: torch has none)."""
    for dtype, top in zip(INDEX_DTYPES, (2**8, 2**15, 2**31, 2**63)):
        if max_value < top:
            return dtype
    raise CnnpruneError(f"index {max_value} does not fit 64 bits")


def _matrix(weight: np.ndarray) -> np.ndarray:
    return weight.reshape(weight.shape[0], -1)


def encode_csr(weight: np.ndarray) -> Encoded:
    m = _matrix(weight)
    rows, cols = np.nonzero(m)
    crow = np.zeros(m.shape[0] + 1, dtype=np.int64)
    crow[1:] = np.cumsum(np.count_nonzero(m, axis=1))
    return Encoded("csr", weight.shape, {"crow_indices": crow.astype(min_uint(int(crow[-1]))),
                                         "col_indices": cols.astype(min_uint(max(m.shape[1] - 1, 0))),
                                         "values": m[rows, cols].copy()})


def encode_delta8(weight: np.ndarray) -> Encoded:
    m = _matrix(weight)
    nz = m != 0
    rows, cols = np.nonzero(nz)
    counts = nz.sum(1)
    first = np.zeros(len(rows), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    first[starts[counts > 0]] = True
    prev = np.empty_like(cols)
    prev[1:] = cols[:-1]
    gaps = np.where(first, cols, cols - prev - 1)
    escapes = gaps // 255
    stream = np.full(len(gaps) + int(escapes.sum()), 255, dtype=np.uint8)
    stream[np.arange(len(gaps)) + np.cumsum(escapes)] = (gaps % 255).astype(np.uint8)
    crow = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Encoded("csr-delta8", weight.shape, {"crow_indices": crow.astype(min_uint(int(crow[-1]))),
                                                "col_deltas": stream, "values": m[rows, cols].copy()})


def encode_bitmask(weight: np.ndarray) -> Encoded:
    flat = weight.reshape(-1)
    mask = flat != 0
    return Encoded("bitmask", weight.shape, {"mask": np.packbits(mask), "values": flat[mask].copy()})


def encode_dense(weight: np.ndarray) -> Encoded:
    return Encoded("dense", weight.shape, {"values": weight.copy()})


def encode(weight: np.ndarray) -> Encoded:
    """One conv/linear weight in its smallest lossless layout (ties: the first listed)."""
    weight = np.ascontiguousarray(weight)
    candidates = [encode_delta8(weight), encode_bitmask(weight), encode_csr(weight), encode_dense(weight)]
    return min(candidates, key=lambda e: e.nbytes)


def fail(name: str, why: str) -> CnnpruneError:
    return CnnpruneError(f"CSR tensor {name}: {why}; the file is corrupt or not a cnnprune CSR export")


def check_parts(enc: Encoded, name: str) -> None:
    """The layout is known, its parts are all there with sane dtypes and the shape is valid:
    what must hold before ``decode`` allocates ``prod(shape)`` floats."""
    if enc.layout not in LAYOUTS:
        raise fail(name, f"unknown layout {enc.layout!r}")
    if set(enc.arrays) != set(PARTS[enc.layout]):
        raise fail(name, f"layout {enc.layout} needs {', '.join(PARTS[enc.layout])}, found {', '.join(sorted(enc.arrays))}")
    if not enc.shape or any(not isinstance(s, int) or s < 0 for s in enc.shape):
        raise fail(name, f"invalid shape {list(enc.shape)}")
    if enc.arrays["values"].dtype.type not in FLOAT_DTYPES or enc.arrays["values"].ndim != (
            len(enc.shape) if enc.layout == "dense" else 1):
        raise fail(name, "values are not a floating-point array of the layout's rank")
    for part in ("crow_indices", "col_indices"):
        if part in enc.arrays and (enc.arrays[part].dtype.type not in INDEX_DTYPES or enc.arrays[part].ndim != 1):
            raise fail(name, f"{part} are not a 1-D integer array")
    for part in ("mask", "col_deltas"):
        if part in enc.arrays and (enc.arrays[part].dtype != np.uint8 or enc.arrays[part].ndim != 1):
            raise fail(name, f"{part} are not a 1-D uint8 array")


def decode_coo(enc: Encoded, name: str = "weight") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and value of every stored entry of the weight's matrix view (rows = dim 0),
    row-major, validated against the shape (no index outside it, no position twice) without
    allocating the dense matrix: readers that keep weights sparse never make it."""
    check_parts(enc, name)
    shape, values = enc.shape, enc.arrays["values"]
    numel = int(np.prod(shape, dtype=object))
    rows = shape[0]
    cols_n = numel // rows if rows else 0
    if enc.layout == "dense":
        if values.shape != shape:
            raise fail(name, f"dense values of shape {list(values.shape)} for shape {list(shape)}")
        m = values.reshape(rows, cols_n)
        r, c = np.nonzero(m)
        return r, c, m[r, c]
    if enc.layout == "bitmask":
        mask = enc.arrays["mask"]
        if len(mask) != -(-numel // 8):
            raise fail(name, f"mask of {len(mask)} bytes for {numel} weights")
        where = np.flatnonzero(np.unpackbits(mask, count=numel))
        if where.size != values.size:
            raise fail(name, "mask and values disagree")
        return where // cols_n, where % cols_n, values
    crow = enc.arrays["crow_indices"].astype(np.int64)
    if crow.size != rows + 1 or int(crow[0]) != 0 or int(crow[-1]) != values.size or bool((np.diff(crow) < 0).any()):
        raise fail(name, "crow_indices are inconsistent")
    row_of = np.repeat(np.arange(rows), np.diff(crow))
    cols = enc.arrays["col_indices"].astype(np.int64) if enc.layout == "csr" else _delta_columns(
        enc.arrays["col_deltas"], row_of, values.size, name)
    if cols.size != values.size or (cols.size and (int(cols.min()) < 0 or int(cols.max()) >= cols_n)):
        raise fail(name, "column indices out of range")
    if cols.size > 1 and bool(((np.diff(cols) <= 0) & (row_of[1:] == row_of[:-1])).any()):
        raise fail(name, "duplicate or unsorted column indices")
    return row_of, cols, values


def decode(enc: Encoded, name: str = "weight") -> np.ndarray:
    """The dense array, bit for bit; every index is validated against the shape first."""
    check_parts(enc, name)
    if enc.layout == "dense":
        if enc.arrays["values"].shape != enc.shape:
            raise fail(name, f"dense values of shape {list(enc.arrays['values'].shape)} for shape {list(enc.shape)}")
        return enc.arrays["values"].copy()
    rows, cols, values = decode_coo(enc, name)
    out = np.zeros((enc.shape[0], int(np.prod(enc.shape[1:], dtype=object))), dtype=values.dtype)
    out[rows, cols] = values
    return out.reshape(enc.shape)


def _delta_columns(stream: np.ndarray, row_of: np.ndarray, nvalues: int, name: str) -> np.ndarray:
    """Column of every value of a delta8 stream (an escape belongs to the row of the next value)."""
    stream = stream.astype(np.int64)
    is_value = stream != 255
    if int(is_value.sum()) != nvalues:
        raise fail(name, "col_deltas and values disagree")
    idx = np.nonzero(is_value)[0]
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx[-1] != len(stream) - 1:
        raise fail(name, "col_deltas end in an escape")
    entry_row = row_of[np.searchsorted(idx, np.arange(len(stream)))]
    step = np.where(is_value, stream + 1, 255)
    # restart the running position at the first stream entry of each row
    starts = np.r_[True, entry_row[1:] != entry_row[:-1]]
    pos = np.cumsum(step)
    base = np.maximum.accumulate(np.where(starts, pos - step, 0))
    return (pos - base - 1)[is_value]
