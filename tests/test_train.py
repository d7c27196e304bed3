from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnprune.errors import CnnpruneError
from cnnprune.model import load_model
from cnnprune.train import TrainConfig, package_default, train


def test_tiny_training_run_writes_resumable_state(tmp_path: Path, fashion_dir: Path) -> None:
    cfg = TrainConfig(data_dir=str(fashion_dir), epochs=2, batch_size=16, out=str(tmp_path / "run"), threads=2)
    last = train(cfg, progress=False)
    assert last["epoch"] == 2 and 0.0 <= last["test_acc"] <= 1.0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2]
    load_model(tmp_path / "run" / "model.pth")
    half = torch.load(tmp_path / "run" / "model_fp16.pth", weights_only=True)
    assert half["conv1.weight"].dtype == torch.float16
    again = train(cfg, resume=True, progress=False)
    assert again == last, "resuming a finished run changes nothing"
    target = package_default(tmp_path / "run", "python -m cnnprune.train …", tmp_path / "shipped.pth")
    card = json.loads(target.with_suffix(".json").read_text())
    assert card["bytes"] == target.stat().st_size and len(card["log"]) == 2 and 0 <= card["test_accuracy_fp16"] <= 1


def test_resume_with_other_settings_is_refused(tmp_path: Path, fashion_dir: Path) -> None:
    cfg = TrainConfig(data_dir=str(fashion_dir), epochs=1, batch_size=16, out=str(tmp_path / "run"))
    train(cfg, progress=False)
    with pytest.raises(CnnpruneError, match="other settings"):
        train(TrainConfig(data_dir=str(fashion_dir), epochs=2, batch_size=16, out=str(tmp_path / "run")),
              resume=True, progress=False)
