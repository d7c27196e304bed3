"""The ``.csr.pt`` file: a lossless, compact sparse form of a permanent checkpoint.

One file, readable with ``torch.load(weights_only=True)``::

    {"format": "cnnprune-csr", "version": 1,
     "tensors": {name: dense tensor | encoded weight dict}}

Every conv and linear weight is viewed as a matrix (rows = out channels, columns =
in·kh·kw) and stored in whichever of these layouts is smallest, so no file is ever larger
than its dense form:

- ``"csr"``: ``crow_indices``, ``col_indices``, ``values``, ``shape`` (index dtypes as small as
  stays lossless; the textbook layout);
- ``"csr-delta8"``: ``crow_indices``, ``values``, ``shape`` and ``col_deltas``, one uint8 per
  nonzero holding the gap to the previous nonzero of the same row (255 = skip 255 columns,
  no value), about half the size of 16-bit columns;
- ``"bitmask"``: ``mask`` (one bit per weight, ``numpy.packbits`` order), ``values``, ``shape``;
- dense: the plain tensor, not a dict (where pruning left too few zeros for any layout
  above to be smaller).

Decoding gives back the dense tensor bit for bit. Pruned weights are stored as +0.0: the
pruning step canonicalises the −0.0 that ``weight * mask`` leaves for negative weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cnnprune.errors import CnnpruneError
from cnnprune.fileio import safe_torch_load, save_torch

FORMAT = "cnnprune-csr"
VERSION = 1
LAYOUTS = ("csr", "csr-delta8", "bitmask", "dense")


def _min_uint(max_value: int) -> torch.dtype:
    """Smallest torch integer dtype that holds 0..max_value losslessly."""
    if max_value < 2**8:
        return torch.uint8
    if max_value < 2**15:
        return torch.int16
    if max_value < 2**31:
        return torch.int32
    return torch.int64


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


def _encoded_bytes(enc: dict) -> int:
    return sum(v.numel() * v.element_size() for v in enc.values() if isinstance(v, torch.Tensor))


def encode_csr(weight: torch.Tensor) -> dict:
    m = _as_matrix(weight)
    crow = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
    crow[1:] = (m != 0).sum(1).cumsum(0)
    rows, cols = (m != 0).nonzero(as_tuple=True)
    return {"layout": "csr", "shape": list(weight.shape),
            "crow_indices": crow.to(_min_uint(int(crow[-1]))),
            "col_indices": cols.to(_min_uint(max(m.shape[1] - 1, 0))),
            "values": m[rows, cols].clone()}


def encode_delta8(weight: torch.Tensor) -> dict:
    m = _as_matrix(weight)
    nz = (m != 0).numpy()
    rows, cols = np.nonzero(nz)
    counts = nz.sum(1)
    first = np.zeros(len(rows), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first[starts[counts > 0]] = True
    prev = np.empty_like(cols)
    prev[1:] = cols[:-1]
    gaps = np.where(first, cols, cols - prev - 1)
    escapes = gaps // 255
    remainder = (gaps % 255).astype(np.uint8)
    stream = np.full(len(gaps) + int(escapes.sum()), 255, dtype=np.uint8)
    slots = np.arange(len(gaps)) + np.cumsum(escapes)
    stream[slots] = remainder
    crow = np.concatenate([[0], np.cumsum(counts)])
    return {"layout": "csr-delta8", "shape": list(weight.shape),
            "crow_indices": torch.from_numpy(crow).to(_min_uint(int(crow[-1]))),
            "col_deltas": torch.from_numpy(stream),
            "values": m[torch.from_numpy(rows), torch.from_numpy(cols)].clone()}


def encode_bitmask(weight: torch.Tensor) -> dict:
    flat = weight.reshape(-1)
    mask = flat != 0
    return {"layout": "bitmask", "shape": list(weight.shape),
            "mask": torch.from_numpy(np.packbits(mask.numpy())), "values": flat[mask].clone()}


def encode_weight(weight: torch.Tensor) -> dict:
    """Encode one conv/linear weight in the smallest lossless layout."""
    weight = weight.detach().cpu().contiguous()
    candidates = [encode_delta8(weight), encode_bitmask(weight), encode_csr(weight),
                  {"layout": "dense", "shape": list(weight.shape), "values": weight.clone()}]
    return min(candidates, key=_encoded_bytes)


def _fail(name: str, why: str) -> CnnpruneError:
    return CnnpruneError(f"CSR tensor {name}: {why}; the file is corrupt or not a cnnprune CSR export")


def decode_weight(enc: dict, name: str = "weight") -> torch.Tensor:
    """Dense tensor from an encoded weight dict; validates every index against the shape."""
    if not isinstance(enc, dict) or enc.get("layout") not in LAYOUTS:
        raise _fail(name, f"unknown layout {enc.get('layout') if isinstance(enc, dict) else type(enc).__name__!r}")
    try:
        shape = [int(s) for s in enc["shape"]]
        values = enc["values"]
        if not isinstance(values, torch.Tensor) or not values.is_floating_point():
            raise _fail(name, "values are not a floating-point tensor")
        if enc["layout"] == "dense":
            if list(values.shape) != shape:
                raise _fail(name, f"dense values of shape {list(values.shape)} for shape {shape}")
            return values.clone()
        numel = int(np.prod(shape))
        rows = shape[0]
        cols_n = numel // rows if rows else 0
        if enc["layout"] == "bitmask":
            bits = np.unpackbits(enc["mask"].numpy().astype(np.uint8), count=numel).astype(bool)
            if len(bits) != numel or int(bits.sum()) != values.numel():
                raise _fail(name, "mask and values disagree")
            out = torch.zeros(numel, dtype=values.dtype)
            out[torch.from_numpy(bits)] = values
            return out.reshape(shape)
        crow = enc["crow_indices"].to(torch.int64)
        if crow.numel() != rows + 1 or int(crow[0]) != 0 or int(crow[-1]) != values.numel() or bool((crow.diff() < 0).any()):
            raise _fail(name, "crow_indices are inconsistent")
        row_of = torch.repeat_interleave(torch.arange(rows), crow.diff())
        if enc["layout"] == "csr":
            cols = enc["col_indices"].to(torch.int64)
        else:
            stream = enc["col_deltas"].numpy().astype(np.int64)
            is_value = stream != 255
            if int(is_value.sum()) != values.numel():
                raise _fail(name, "col_deltas and values disagree")
            step = np.where(is_value, stream + 1, 255)
            # restart the running position at the first stream entry of each row
            entry_row = _stream_rows(is_value, row_of.numpy())
            starts = np.r_[True, entry_row[1:] != entry_row[:-1]]
            pos = np.cumsum(step)
            base = np.maximum.accumulate(np.where(starts, pos - step, 0))
            cols = torch.from_numpy((pos - base - 1)[is_value])
        if cols.numel() != values.numel() or (cols.numel() and (int(cols.min()) < 0 or int(cols.max()) >= cols_n)):
            raise _fail(name, "column indices out of range")
        out = torch.zeros(rows, cols_n, dtype=values.dtype)
        out[row_of, cols] = values
        if int((out != 0).sum()) != int((values != 0).sum()):
            raise _fail(name, "duplicate column indices")
        return out.reshape(shape)
    except CnnpruneError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise _fail(name, f"{type(exc).__name__}: {str(exc)[:80]}") from None


def _stream_rows(is_value: np.ndarray, value_rows: np.ndarray) -> np.ndarray:
    """Row of every delta8 stream entry: an escape belongs to the row of the next value."""
    rows = np.empty(len(is_value), dtype=np.int64)
    idx = np.nonzero(is_value)[0]
    if len(idx) == 0:
        return rows
    next_value = np.searchsorted(idx, np.arange(len(is_value)))
    next_value = np.minimum(next_value, len(idx) - 1)
    rows[:] = value_rows[next_value]
    return rows


def is_prunable_weight(name: str, tensor: torch.Tensor) -> bool:
    """Conv (4-D) and linear (2-D) weights: the tensors the report pruned."""
    return name.endswith(".weight") and tensor.ndim in (2, 4)


def encode_state(state: dict[str, torch.Tensor]) -> dict:
    """Encoded weights as dicts; a weight whose smallest layout is dense stays a plain tensor."""
    tensors = {}
    for k, v in state.items():
        enc = encode_weight(v) if is_prunable_weight(k, v) else None
        tensors[k] = v.detach().cpu().clone() if enc is None or enc["layout"] == "dense" else enc
    return {"format": FORMAT, "version": VERSION, "tensors": tensors}


def save(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write ``state`` as a ``.csr.pt`` file (atomically)."""
    save_torch(encode_state(state), path)


def load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a ``.csr.pt`` file back into a dense state_dict, bit for bit."""
    obj = safe_torch_load(path, "CSR file")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CnnpruneError(f"{path} is not a cnnprune CSR file (no format tag {FORMAT!r}); "
                            "make one with `python -m cnnprune.export --sparse`")
    if obj.get("version") != VERSION:
        raise CnnpruneError(f"{path} has CSR format version {obj.get('version')}, this cnnprune reads {VERSION}")
    tensors = obj.get("tensors")
    if not isinstance(tensors, dict):
        raise CnnpruneError(f"{path} has no tensors table; the file is corrupt")
    return {k: (decode_weight(v, f"{Path(path).name}:{k}") if isinstance(v, dict) else v) for k, v in tensors.items()}


def layout_summary(path: str | os.PathLike[str]) -> dict[str, int]:
    """How many weights use each layout in a ``.csr.pt`` file."""
    obj = safe_torch_load(path, "CSR file")
    counts: dict[str, int] = {}
    for v in obj.get("tensors", {}).values():
        if isinstance(v, dict):
            counts[v["layout"]] = counts.get(v["layout"], 0) + 1
    return counts
