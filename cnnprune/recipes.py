"""Recipe dependence (beyond the report): how much pruning costs a model depends on how it was
trained. ``--compare-checkpoint`` measures a second unpruned model (another training recipe)
the same way as the run's own: its top-1, and each pruned checkpoint's plain (the report's
method) and BN-recalibrated top-1, dense, on the same test images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cnnprune.config import PipelineConfig
from cnnprune.fileio import sha256_file

# What a model card (the JSON beside a shipped checkpoint) says of how the model was trained.
RECIPE_KEYS = ("epochs", "batch_size", "max_lr", "weight_decay", "decay_norms", "schedule", "label_smoothing")


def training_recipe(checkpoint: Path) -> dict | None:
    """The training settings recorded beside ``checkpoint`` (``NAME.json``, as ``train --package``
    writes), or None where there is no such card."""
    card = checkpoint.with_suffix(".json")
    try:
        config = json.loads(card.read_text()).get("config", {})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return {k: config[k] for k in RECIPE_KEYS if k in config} or None


def measure_source(config: PipelineConfig, checkpoint: Path, folder: Path,
                   evaluate: Callable[[Path], dict]) -> dict:
    """A second source model pruned by the run's schedules, plain and (with ``recalibrate_bn``)
    BN-recalibrated, each checkpoint evaluated by ``evaluate`` (dense top-1 and correctness)."""
    from cnnprune.prune import PruneConfig, run_pruning

    pruned = tuple(m for m in config.models if m != "unpruned")
    out = {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint), "recipe": training_recipe(checkpoint),
           "unpruned": evaluate(checkpoint), "models": {}}
    methods = {"plain": 0} | ({"recalibrated": config.recalibrate_bn} if config.recalibrate_bn else {})
    for method, images in methods.items():
        manifest = run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(folder / method), only=pruned,
                                           recalibrate_bn=images, dataset=config.dataset, data_dir=config.data_dir,
                                           fresh=config.fresh))
        for name in pruned:
            entry = out["models"].setdefault(name, {"sparsity": manifest["checkpoints"][name]["sparsity_tensor"]})
            entry[method] = evaluate(folder / method / f"{name}.pth")
    return out
