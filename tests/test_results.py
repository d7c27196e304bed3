"""Assembling results.json: the exact McNemar test."""

from __future__ import annotations

import pytest

from cnnprune.results import mcnemar


def test_mcnemar_exact() -> None:
    assert mcnemar([1, 1, 0], [1, 1, 0]) == {"only_baseline_correct": 0, "only_other_correct": 0, "p_value": 1.0}
    # 10 discordant pairs, all one way: p = 2 · 0.5^10
    t = mcnemar([1] * 10 + [0] * 5, [0] * 10 + [0] * 5)
    assert t["only_baseline_correct"] == 10 and t["p_value"] == pytest.approx(2 / 1024)
    # 3 against 1: p = 2 · (1 + 4) / 16
    assert mcnemar([1, 1, 1, 0], [0, 0, 0, 1])["p_value"] == pytest.approx(10 / 16)
