"""The terminal summary fits 80 columns, model names whole."""

from __future__ import annotations

from rich.console import Console
from synthetic import synthetic

from cnnprune.summary import summary_table


def test_summary_fits_80_columns() -> None:
    console = Console(width=80, record=True)
    console.print(summary_table(synthetic()))
    text = console.export_text()
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "iterative_90" in text and "one_shot_90" in text and "b32" in text
