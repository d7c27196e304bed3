"""The plan cache: what calibration decided at one batch size comes back as it was written, and
a record that no longer fits the model is not applied."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnnprune.fold import FoldedConv
from cnnprune.native_plan import ConvPlan, SpanTile
from cnnprune.plancache import PlanCache


def plans() -> dict[str, ConvPlan]:
    """A span layer and a 3x3 one, freshly planned (no mode, no tiling)."""
    one = FoldedConv("one", np.ones((8, 4, 1, 1), np.float32), np.zeros(8, np.float32), 1, 0)
    three = FoldedConv("three", np.ones((8, 8, 3, 3), np.float32), np.zeros(8, np.float32), 1, 1)
    return {"one": ConvPlan(one, 4, 4, 4, 4, span=True, gemm_ok=True), "three": ConvPlan(three, 4, 4, 4, 4)}


def test_modes_timings_and_span_tilings_round_trip(tmp_path: Path) -> None:
    cache = PlanCache("model", folder=tmp_path)
    convs = plans()
    convs["one"].mode, convs["one"].span_tile, convs["one"].ms = "sparse", SpanTile(1, sums=True), {"sparse": 1.5,
                                                                                                    "gemm": 2.0}
    convs["three"].mode, convs["three"].ms = "dense", {"sparse": 3.0, "dense": 1.0}
    cache.put("batch 16", {"convs": convs, "engine": "sparse", "sparse_ms": 9.0, "dense_ms": 12.0})
    cached = cache.get("batch 16")
    fresh = {"convs": plans()}
    assert cached is not None and cached.fits(fresh["convs"], ("sparse", "dense", "gemm"))
    cached.apply(fresh)
    assert fresh["convs"]["one"].span_tile == SpanTile(1, sums=True) and fresh["convs"]["one"].mode == "sparse"
    assert fresh["convs"]["three"].span_tile is None and fresh["convs"]["three"].mode == "dense"
    assert fresh["convs"]["one"].ms == {"sparse": 1.5, "gemm": 2.0} and fresh["engine"] == "sparse"
    assert cache.get("batch 1") is None


def test_a_tiling_that_names_none_or_a_layer_without_a_span_does_not_fit(tmp_path: Path) -> None:
    cache = PlanCache("model", folder=tmp_path)
    convs = plans()
    cache.put("b", {"convs": convs, "engine": "sparse"})
    record = json.loads(cache.path("b").read_text())
    for tiles in ({"one": 0}, {"one": 4}, {"three": 1}, {"gone": 1}):
        cache.path("b").write_text(json.dumps({**record, "tiles": tiles}))
        cached = cache.get("b")
        assert cached is not None and not cached.fits(plans(), ("sparse",)), tiles
    cache.path("b").write_text(json.dumps({**record, "tiles": {"one": "x"}}))
    assert cache.get("b") is None


def test_the_span_tiling_of_a_3x3_layer_round_trips_where_it_is_offered(tmp_path: Path) -> None:
    cache = PlanCache("model", folder=tmp_path)
    convs = plans()
    convs["three"].conv_span, convs["three"].span_tile, convs["three"].mode = True, SpanTile(1), "sparse"
    cache.put("b", {"convs": convs, "engine": "sparse"})
    cached = cache.get("b")
    offered = plans()
    offered["three"].conv_span = True
    assert cached is not None and cached.fits(offered, ("sparse",)) and not cached.fits(plans(), ("sparse",))
    fresh = {"convs": offered}
    cached.apply(fresh)
    assert fresh["convs"]["three"].span_tile == SpanTile(1)
