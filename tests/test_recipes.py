"""Recipe dependence: a second source model measured as the run's own, and its section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from synthetic import synthetic

from cnnprune.analysis import analyse
from cnnprune.config import PipelineConfig
from cnnprune.markdown import markdown
from cnnprune.recipes import measure_source, training_recipe


def test_training_recipe_comes_from_the_model_card(tmp_path: Path, checkpoint: Path) -> None:
    ckpt = tmp_path / "m.pth"
    shutil.copy(checkpoint, ckpt)
    assert training_recipe(ckpt) is None
    ckpt.with_suffix(".json").write_text(json.dumps({"config": {"weight_decay": 0.01, "epochs": 8, "seed": 0}}))
    assert training_recipe(ckpt) == {"weight_decay": 0.01, "epochs": 8}


def test_a_second_source_is_pruned_plain_and_recalibrated(tmp_path: Path, checkpoint: Path, fashion_dir: Path) -> None:
    config = PipelineConfig(models=("unpruned", "one_shot_90"), recalibrate_bn=8, data_dir=str(fashion_dir),
                            artifacts=str(tmp_path / "a"))
    seen = []
    out = measure_source(config, checkpoint, tmp_path / "cmp",
                         lambda p: seen.append(p) or {"accuracy": 0.5, "correct": [1, 0]})
    assert set(out["models"]) == {"one_shot_90"} and out["unpruned"]["accuracy"] == 0.5
    assert set(out["models"]["one_shot_90"]) == {"sparsity", "plain", "recalibrated"}
    assert seen == [checkpoint, tmp_path / "cmp" / "plain" / "one_shot_90.pth",
                    tmp_path / "cmp" / "recalibrated" / "one_shot_90.pth"]


def test_recipe_section() -> None:
    r = synthetic()
    assert "Recipe dependence" not in markdown(analyse(r), [])
    r["recipes"] = {"source": {"checkpoint": "/x/old.pth", "recipe": {"weight_decay": 5e-4, "max_lr": 0.1,
                                                                       "batch_size": 128, "epochs": 10}},
                    "compare": {"checkpoint": "/x/new.pth", "sha256": "0", "recipe": None, "unpruned": 0.94,
                                "models": {"one_shot_90": {"sparsity": 0.9, "plain": {
                                    "accuracy": 0.935, "vs_unpruned": {"only_baseline_correct": 9,
                                                                       "only_other_correct": 4, "p_value": 0.27}}}}}}
    text = markdown(analyse(r), [])
    assert "`old.pth` (weight decay 0.0005 on conv/linear weights, one-cycle learning rate peaking at 0.1" in text
    assert "`new.pth` (training recipe not recorded beside the checkpoint)" in text
    assert "| one_shot_90 | 92.60% (Δ -0.40 pp, p = 1.000) | – | 93.50% (Δ -0.50 pp, p = 0.270) | – |" in text
