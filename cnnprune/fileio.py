"""Atomic writes, checksums and safe checkpoint reading.

Every output of cnnprune goes through :func:`atomic_write`: it is written to a temporary
name in the destination folder and renamed over the target, so a run killed at any moment
leaves either the previous good file or the new complete one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cnnprune.errors import CnnpruneError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp's 0600 would make shared outputs unreadable to others
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    import torch  # here, not at the top: the torch-free runtime writes and reads files with this module

    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: str | os.PathLike[str], what: str, hint: str = "") -> Path:
    """Return ``path`` as a Path if it is a readable file, else raise a one-line error."""
    p = Path(path)
    if not p.exists():
        raise CnnpruneError(f"{what} {p} does not exist{'; ' + hint if hint else ''}")
    if not p.is_file():
        raise CnnpruneError(f"{what} {p} is not a file{'; ' + hint if hint else ''}")
    if not os.access(p, os.R_OK):
        raise CnnpruneError(f"{what} {p} is not readable; check its permissions")
    return p


def safe_torch_load(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing, corrupt or unsafe files."""
    p = require_file(path, what)
    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CnnpruneError(
                f"{what} {p} holds Python objects that are not plain tensors; refusing to unpickle "
                "it (only weights_only checkpoints are accepted)") from None
        raise CnnpruneError(f"{what} {p} is not a readable PyTorch file (truncated or corrupt?): "
                            f"{first[:160]}") from None


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files a killed run of ours left in ``folder`` (``.NAME.*.tmp``)."""
    removed = 0
    for path in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed
