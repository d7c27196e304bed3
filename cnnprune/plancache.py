"""Calibration results kept on disk, so that a second load of the same model on the same
machine plans instantly (the runtime's import + load budget is half a second; calibration at
batch 32 takes longer).

A cached plan is what calibration decided at one batch size: each layer's mode, the timings
that decided it (ms) and the whole-network choice. It is keyed by the model file's sha256, the
kernel library's key (sources, flags and CPU: ``kernels.library_key``) and the engine's
settings (batch, threads, the modes it may choose, its dense fallback), so a plan is never
reused on another machine, build or model. Files live in ``$CNNPRUNE_CACHE/plans`` (see
``kernels.cache_dir``); a file that cannot be read, or that no longer fits the model, is
ignored and recalibrated over. Delete the folder to force new timings.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cnnprune.fileio import write_json
from cnnprune.native_plan import MODES, SpanTile

VERSION = 6  # 2: near ties go to the sparse kernel (engine.SPARSE_TIE); 3: calibration timed over >= 10 ms;
# 4: the whole network may fall back to any of several dense engines (``dense_engine``);
# 5: traced plans lose their dead channels (cnnprune.channels), so layers change shape;
# 6: span layers keep their calibrated tiling (``tiles``, native_plan.SpanTile)


@dataclass
class CachedPlan:
    layers: dict[str, str]
    ms: dict[str, dict[str, float]]
    engine: str
    sparse_ms: float | None = None
    dense_ms: float | None = None
    dense_engine: str | None = None  # the fastest dense fallback when it was decided
    tiles: dict[str, int] = field(default_factory=dict)  # span layers' tilings (``SpanTile.flag``)

    def fits(self, plans: dict, modes: tuple[str, ...]) -> bool:
        """Same layers, every cached mode one this engine may run for that layer, and every
        cached tiling one of a span layer's."""
        return set(self.layers) == set(plans) and all(
            m in modes and (m != "winograd" or plans[k].winograd_ok) and (m != "gemm" or plans[k].gemm_ok)
            for k, m in self.layers.items()) and all(
            k in plans and plans[k].tiled and SpanTile.from_flag(t) is not None for k, t in self.tiles.items())

    def apply(self, plan: dict) -> None:
        for name, p in plan["convs"].items():
            p.mode, p.ms = self.layers[name], dict(self.ms.get(name, {}))
            if name in self.tiles:
                p.span_tile = SpanTile.from_flag(self.tiles[name])
        plan["engine"] = self.engine
        for key in ("sparse_ms", "dense_ms", "dense_engine"):
            if getattr(self, key) is not None:
                plan[key] = getattr(self, key)


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class PlanCache:
    """The plans of one model file (``model_sha256``) on this machine and kernel build."""

    def __init__(self, model_sha256: str, folder: Path | None = None) -> None:
        from cnnprune.kernels import cache_dir, library_key

        self.folder = folder or cache_dir() / "plans"
        self.model_sha256 = model_sha256
        self.prefix = f"{model_sha256}|{library_key()}|v{VERSION}"

    def path(self, setting: str) -> Path:
        return self.folder / f"{hashlib.sha256(f'{self.prefix}|{setting}'.encode()).hexdigest()[:24]}.json"

    def get(self, setting: str) -> CachedPlan | None:
        try:
            obj = json.loads(self.path(setting).read_text())
            layers = {str(k): str(v) for k, v in obj["layers"].items()}
            ms = {str(k): {m: float(t) for m, t in v.items() if m in MODES and _number(t) is not None}
                  for k, v in obj.get("ms", {}).items()}
            dense = obj.get("dense_engine")
            tiles = {str(k): int(v) for k, v in obj.get("tiles", {}).items()}
            return CachedPlan(layers, ms, str(obj["engine"]), _number(obj.get("sparse_ms")), _number(obj.get("dense_ms")),
                              dense if isinstance(dense, str) else None, tiles)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def put(self, setting: str, plan: dict) -> None:
        convs = plan["convs"]
        record = {"layers": {k: p.mode for k, p in convs.items()},
                  "ms": {k: {m: t for m, t in p.ms.items() if math.isfinite(t)} for k, p in convs.items()},
                  "engine": plan["engine"], "sparse_ms": plan.get("sparse_ms"), "dense_ms": plan.get("dense_ms"),
                  "dense_engine": plan.get("dense_engine"),
                  "tiles": {k: p.span_tile.flag for k, p in convs.items() if p.span_tile is not None}}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.path(setting), record)
        except OSError:
            pass  # a read-only cache only costs the next load its calibration
