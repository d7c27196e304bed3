"""BatchNorm recalibration: statistics re-estimated from training images, every weight untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnprune.data import calibration_split, load_split
from cnnprune.errors import CnnpruneError
from cnnprune.model import build_model
from cnnprune.prune import PruneConfig, run_pruning
from cnnprune.recalibrate import recalibrate_state


def test_only_batchnorm_statistics_change(random_state, fashion_dir: Path) -> None:
    images = load_split("fashion-mnist", "train", fashion_dir).subset(20)
    new = recalibrate_state(random_state, images)
    assert new.keys() == random_state.keys()
    for k, v in random_state.items():
        if k.endswith((".running_mean", ".running_var")):
            assert not torch.equal(new[k], v), k
        elif not k.endswith(".num_batches_tracked"):
            assert torch.equal(new[k], v), k


def test_statistics_are_those_of_the_calibration_images(random_state, fashion_dir: Path) -> None:
    images = load_split("fashion-mnist", "train", fashion_dir).subset(20)   # one batch of 20
    new = recalibrate_state(random_state, images)
    model = build_model()
    model.load_state_dict(random_state)
    with torch.no_grad():
        y = model.conv1(next(images.batches(20))[0])
    assert torch.allclose(new["bn1.running_mean"], y.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(new["bn1.running_var"], y.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)


def test_calibration_images_come_from_the_training_split(fashion_dir: Path) -> None:
    split = calibration_split("fashion-mnist", fashion_dir, 8)
    train = load_split("fashion-mnist", "train", fashion_dir)
    assert len(split) == 8 and torch.equal(split.images, train.images[:8])
    with pytest.raises(CnnpruneError, match="--recalibrate-bn 41: only 40 training images"):
        calibration_split("fashion-mnist", fashion_dir, 41)


def test_the_shipped_sample_serves_when_no_training_split_is_installed(monkeypatch, tmp_path: Path) -> None:
    import cnnprune.data as data

    monkeypatch.setattr(data, "DEFAULT_FASHION_MNIST_DIR", tmp_path / "none")
    split = calibration_split("fashion-mnist", None, 2000)
    assert len(split) == 2000 and "fashion-mnist" in split.source
    with pytest.raises(CnnpruneError, match="only 2,000 training images"):
        calibration_split("fashion-mnist", None, 2001)


def test_prune_with_recalibration_keeps_the_masks(checkpoint: Path, fashion_dir: Path, tmp_path: Path) -> None:
    plain = run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(tmp_path / "p"), only=("one_shot_90",)),
                        progress=False)
    recal = run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(tmp_path / "r"), only=("one_shot_90",),
                                    recalibrate_bn=16, data_dir=str(fashion_dir)), progress=False)
    entry = recal["checkpoints"]["one_shot_90"]
    assert entry["recalibrate_bn"]["images"] == 16 and recal["recalibrate_bn"] == 16
    assert entry["sparsity_tensor"] == plain["checkpoints"]["one_shot_90"]["sparsity_tensor"]
    a = torch.load(tmp_path / "p" / "one_shot_90.pth", weights_only=True)
    b = torch.load(tmp_path / "r" / "one_shot_90.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith(".weight"))
    assert not torch.equal(a["layer4.1.bn2.running_var"], b["layer4.1.bn2.running_var"])
