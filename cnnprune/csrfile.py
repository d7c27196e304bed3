"""``NAME.csr.safetensors``: the ``.csr.pt`` layouts in safetensors, readable without torch.

safetensors (https://github.com/huggingface/safetensors) is a header and raw bytes, no pickle::

    8 bytes   little-endian uint64: header length H
    H bytes   JSON: {"__metadata__": {str: str}, tensor name: {"dtype", "shape", "data_offsets"}}
    rest      the tensors' bytes, back to back (offsets relative to here, no holes)

This module writes and reads that format itself (numpy only), so the runtime needs nothing
else; files it writes read back with the ``safetensors`` package, and the other way round.

cnnprune's content: a dense tensor under its state_dict name; an encoded weight
(:mod:`cnnprune.layouts`) as one tensor per part, ``NAME/part``. The metadata holds
``format`` ("cnnprune-csr"), ``version`` ("1"), ``layouts`` (JSON: name → layout and dense
shape) and ``model`` (JSON: the model spec, as the export manifest records it).

Reading checks, before allocating anything from what the file declares: the header's length
against the file, every tensor's dtype, shape and byte range (in the file, sized to its
shape, tensors back to back), then the weights' declared shapes against the architecture.
Each failure is one line naming the file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnprune import layouts
from cnnprune.errors import CnnpruneError
from cnnprune.fileio import atomic_write, require_file
from cnnprune.fold import Coo
from cnnprune.layouts import Encoded

FORMAT = "cnnprune-csr"
VERSION = "1"
SUFFIX = ".csr.safetensors"
MAX_HEADER = 16 << 20  # bytes; the ResNet18's header is a few KB
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


def _fail(path: Path, why: str) -> CnnpruneError:
    return CnnpruneError(f"{path}: {why}; the file is corrupt or not a cnnprune {SUFFIX} export "
                         "(make one with `python -m cnnprune.export --sparse`)")


# ---------------------------------------------------------------- safetensors itself


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """Write ``tensors`` atomically, each in C order. Larger items come
    first, so every tensor starts at a multiple of its item size (the header is padded to 8)."""
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for name in order:
        a = tensors[name]
        if a.dtype not in CODES:
            raise CnnpruneError(f"tensor {name}: dtype {a.dtype} has no safetensors code")
        header[name] = {"dtype": CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            f.write(tensors[name].tobytes(order="C"))


def _entry(path: Path, name: str, e, size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"} or e["dtype"] not in DTYPES:
        raise _fail(path, f"tensor {name!r} has an invalid header entry")
    shape, offsets = e["shape"], e["data_offsets"]
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 8:
        raise _fail(path, f"tensor {name!r} has an invalid shape")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise _fail(path, f"tensor {name!r} has invalid data offsets")
    dtype = np.dtype(DTYPES[e["dtype"]])
    begin, end = offsets
    if not 0 <= begin <= end <= size or end - begin != int(np.prod(shape, dtype=object)) * dtype.itemsize:
        raise _fail(path, f"tensor {name!r}: bytes {begin}..{end} do not hold shape {shape} of {e['dtype']} "
                          f"within the {size} data bytes")
    return dtype, tuple(shape), begin, end


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (read-only views of the file's bytes) and metadata, every declaration checked first."""
    path = require_file(path, "model file", "make one with `python -m cnnprune.export --sparse`")
    data = path.read_bytes()
    if len(data) < 8:
        raise _fail(path, f"{len(data)} bytes, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_HEADER, len(data) - 8):
        raise _fail(path, f"header length {n} exceeds the file ({len(data)} bytes) or {MAX_HEADER} bytes")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, ValueError):
        raise _fail(path, "the header is not JSON") from None
    if not isinstance(header, dict):
        raise _fail(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _fail(path, "__metadata__ is not a table of strings")
    body = memoryview(data)[8 + n:]
    entries = {name: _entry(path, name, e, len(body)) for name, e in header.items()}
    spans = sorted((b, e) for _, _, b, e in entries.values())
    starts, ends = [b for b, _ in spans], [e for _, e in spans]
    holes = (starts != [0] + ends[:-1] or ends[-1] != len(body)) if ends else len(body) != 0
    if holes:
        raise _fail(path, "the tensors' bytes overlap, leave holes or do not fill the data")
    tensors = {name: np.frombuffer(body[b:e], dtype=dtype).reshape(shape)
               for name, (dtype, shape, b, e) in entries.items()}
    return tensors, metadata


# ---------------------------------------------------------------- cnnprune's content


def is_prunable(name: str, a: np.ndarray) -> bool:
    """Conv (4-D) and linear (2-D) weights: the tensors the report pruned."""
    return name.endswith(".weight") and a.ndim in (2, 4)


def save_state(state: Mapping[str, np.ndarray], path: str | os.PathLike[str], model: dict | None = None) -> None:
    """Write a state_dict (numpy arrays) with every prunable weight in its smallest layout."""
    tensors: dict[str, np.ndarray] = {}
    kinds: dict[str, dict] = {}
    for name, a in state.items():
        if "/" in name:
            raise CnnpruneError(f"tensor name {name!r} contains '/', which the file reserves for layout parts")
        enc = layouts.encode(a) if is_prunable(name, a) else None
        if enc is None or enc.layout == "dense":
            tensors[name] = np.array(a, order="C")  # ascontiguousarray would make a 0-d array 1-d
            continue
        kinds[name] = {"layout": enc.layout, "shape": list(enc.shape)}
        tensors.update({f"{name}/{part}": v for part, v in enc.arrays.items()})
    metadata = {"format": FORMAT, "version": VERSION, "layouts": json.dumps(kinds, separators=(",", ":"))}
    if model is not None:
        metadata["model"] = json.dumps(model, separators=(",", ":"))
    write_safetensors(path, tensors, metadata)


@dataclass
class CsrFile:
    """A read ``.csr.safetensors``: the encoded weights, the plain tensors and the model record."""

    path: Path
    encoded: dict[str, Encoded]
    plain: dict[str, np.ndarray]
    model: dict

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every state_dict key and the dense shape the file declares for it."""
        return {**{k: v.shape for k, v in self.plain.items()}, **{k: e.shape for k, e in self.encoded.items()}}

    def check(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """The declared keys and shapes are the architecture's: one line naming the first that is not."""
        shapes = self.shapes()
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        if missing or extra:
            what = f"lacks {missing[0]!r}" if missing else f"has an unexpected tensor {extra[0]!r}"
            raise CnnpruneError(f"{self.path} {what}: it is not a checkpoint of this architecture")
        for k, shape in expected.items():
            if tuple(shapes[k]) != tuple(shape):
                raise CnnpruneError(f"{self.path}: {k} has shape {list(shapes[k])}, the architecture's is {list(shape)}")

    def lazy_state(self, coo: bool = False) -> Mapping[str, np.ndarray]:
        """The state_dict decoding each tensor when it is read (call ``check`` first): a reader
        that folds layer by layer holds one layer at a time, not the whole network; ``coo``:
        encoded weights come as ``fold.Coo`` (their entries, never made dense)."""
        return _LazyState(self, coo)

    def decode(self, key: str, coo: bool = False) -> np.ndarray | Coo:
        if key in self.encoded:
            enc, name = self.encoded[key], f"{self.path.name}:{key}"
            return Coo(enc.shape, *layouts.decode_coo(enc, name)) if coo else layouts.decode(enc, name)
        return self.plain[key].copy()

    def state(self) -> dict[str, np.ndarray]:
        """The dense state_dict, bit for bit (call ``check`` first: decoding allocates the declared shapes)."""
        return {k: self.decode(k) for k in self.shapes()}


class _LazyState(Mapping):
    def __init__(self, f: CsrFile, coo: bool) -> None:
        self.f, self.coo = f, coo

    def __getitem__(self, key: str) -> np.ndarray | Coo:
        if key not in self.f.encoded and key not in self.f.plain:
            raise KeyError(key)
        return self.f.decode(key, self.coo)

    def __iter__(self):
        return iter(self.f.shapes())

    def __len__(self) -> int:
        return len(self.f.encoded) + len(self.f.plain)


def _kinds(path: Path, metadata: dict[str, str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    if metadata.get("format") != FORMAT:
        raise CnnpruneError(f"{path} is not a cnnprune CSR file (no format tag {FORMAT!r} in its metadata); "
                            "make one with `python -m cnnprune.export --sparse`")
    if metadata.get("version") != VERSION:
        raise CnnpruneError(f"{path} has CSR format version {metadata.get('version')}, this cnnprune reads {VERSION}")
    try:
        kinds = json.loads(metadata.get("layouts", "{}"))
        return {str(k): (str(v["layout"]), tuple(v["shape"])) for k, v in kinds.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise _fail(path, "the layouts table is not valid") from None


def read(path: str | os.PathLike[str]) -> CsrFile:
    """Read and check the file's structure (nothing decoded yet)."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    kinds = _kinds(path, metadata)
    encoded: dict[str, Encoded] = {}
    for name, (layout, shape) in kinds.items():
        parts = layouts.PARTS.get(layout)
        if parts is None:
            raise _fail(path, f"tensor {name!r} has the unknown layout {layout!r}")
        missing = [p for p in parts if f"{name}/{p}" not in tensors]
        if missing:
            raise _fail(path, f"tensor {name!r} ({layout}) lacks its part {missing[0]!r}")
        encoded[name] = Encoded(layout, shape, {p: tensors.pop(f"{name}/{p}") for p in parts})
        layouts.check_parts(encoded[name], f"{path.name}:{name}")
    stray = [k for k in tensors if "/" in k]
    if stray:
        raise _fail(path, f"tensor {stray[0]!r} is a part of no listed weight")
    try:
        model = json.loads(metadata.get("model", "{}"))
    except ValueError:
        raise _fail(path, "the model record is not JSON") from None
    return CsrFile(path, encoded, tensors, model if isinstance(model, dict) else {})


def load_state(path: str | os.PathLike[str],
               expected: Callable[[dict[str, tuple[int, ...]]], Mapping[str, tuple[int, ...]]] | None = None
               ) -> dict[str, np.ndarray]:
    """The dense state_dict of a ``.csr.safetensors`` file; ``expected`` maps the declared
    shapes to the architecture's (e.g. with the class count the file declares), checked first."""
    f = read(path)
    if expected is not None:
        f.check(expected(f.shapes()))
    return f.state()
