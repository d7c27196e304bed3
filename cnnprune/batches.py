"""Batching shared by every test split (in-memory arrays and image folders alike)."""

from __future__ import annotations

from collections.abc import Iterator

from cnnprune.errors import CnnpruneError


def batch_spans(total: int, batch_size: int, limit: int | None = None) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch over the first ``limit`` of ``total`` items; the last may be short."""
    if batch_size < 1:
        raise CnnpruneError(f"--batch-size must be ≥ 1, got {batch_size}")
    n = total if limit is None else min(limit, total)
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)
