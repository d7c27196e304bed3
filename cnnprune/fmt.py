"""How figures are written in the report and the terminal: one place for every format."""

from __future__ import annotations


def pct(x: float) -> str:
    """A fraction 0–1 as a percentage with two decimals."""
    return f"{100 * x:.2f}%"


def mb(x: float | None) -> str:
    """Bytes as decimal megabytes ("–" when not measured)."""
    return "–" if x is None else f"{x / 1e6:.1f} MB"


def times(x: float | None) -> str:
    """A ratio as "1.23×" ("–" when not measured)."""
    return "–" if x is None else f"{x:.2f}×"
