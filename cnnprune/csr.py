"""The ``.csr.pt`` file: a lossless, compact sparse form of a permanent checkpoint.

One file, readable with ``torch.load(weights_only=True)``::

    {"format": "cnnprune-csr", "version": 1,
     "tensors": {name: dense tensor | encoded weight dict}}

An encoded weight dict is ``{"layout": ..., "shape": [...], part: tensor, ...}`` with the
parts of one of the layouts in :mod:`cnnprune.layouts` (where they are described); a weight
whose smallest layout is dense stays a plain tensor. Decoding gives back the dense tensor bit
for bit. The torch-free twin of this file is ``.csr.safetensors`` (:mod:`cnnprune.csrfile`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnprune import layouts
from cnnprune.errors import CnnpruneError
from cnnprune.fileio import safe_torch_load, save_torch
from cnnprune.layouts import LAYOUTS, Encoded

FORMAT = "cnnprune-csr"
VERSION = 1


def _as_dict(enc: Encoded) -> dict:
    return {"layout": enc.layout, "shape": list(enc.shape), **{k: torch.from_numpy(v) for k, v in enc.arrays.items()}}


def _encoder(fn):
    def encode(weight: torch.Tensor) -> dict:
        return _as_dict(fn(weight.detach().cpu().contiguous().numpy()))
    encode.__doc__ = fn.__doc__
    return encode


encode_csr = _encoder(layouts.encode_csr)
encode_delta8 = _encoder(layouts.encode_delta8)
encode_bitmask = _encoder(layouts.encode_bitmask)
encode_weight = _encoder(layouts.encode)


def _encoded_bytes(enc: dict) -> int:
    return sum(v.numel() * v.element_size() for v in enc.values() if isinstance(v, torch.Tensor))


def decode_weight(enc: dict, name: str = "weight") -> torch.Tensor:
    """Dense tensor from an encoded weight dict; validates every index against the shape."""
    if not isinstance(enc, dict) or enc.get("layout") not in LAYOUTS:
        raise layouts.fail(name, f"unknown layout {enc.get('layout') if isinstance(enc, dict) else type(enc).__name__!r}")
    arrays = {k: v for k, v in enc.items() if k not in ("layout", "shape")}
    if not all(isinstance(v, torch.Tensor) for v in arrays.values()):
        raise layouts.fail(name, "a part is not a tensor")
    try:
        shape = tuple(int(s) for s in enc["shape"])
        return torch.from_numpy(layouts.decode(Encoded(enc["layout"], shape, {k: v.numpy() for k, v in arrays.items()}), name))
    except CnnpruneError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        raise layouts.fail(name, f"{type(exc).__name__}: {str(exc)[:80]}") from None


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
