"""Every command: bad input → exit code ≠ 0 and exactly one line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_missing_checkpoint(tmp_path: Path) -> None:
    assert_one_line_error(run("cnnprune.prune", "--checkpoint", str(tmp_path / "x.pth"), "--out", str(tmp_path)),
                          "--checkpoint", "x.pth")
    assert_one_line_error(run("cnnprune.evaluate", "--checkpoint", str(tmp_path / "x.pth")), "x.pth")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "c.pth").write_bytes(b"PK\x03\x04 not really")
    assert_one_line_error(run("cnnprune.prune", "--checkpoint", str(tmp_path / "c.pth"), "--out", str(tmp_path)),
                          "c.pth")
    assert not (tmp_path / "one_shot_50.pth").exists()


def test_bad_numbers() -> None:
    assert_one_line_error(run("cnnprune.evaluate", "--batch-size", "0"), "--batch-size")
    assert_one_line_error(run("cnnprune.train", "--epochs", "0"), "--epochs")
    assert_one_line_error(run("cnnprune.prune", "--finetune-epochs", "-1"), "--finetune-epochs")
    assert_one_line_error(run("cnnprune.pipeline", "--batches", "1,0"), "--batches")
    assert_one_line_error(run("cnnprune.prune", "--targets", "0.5,1.0"), "--targets", "outside [0, 1)")
    assert_one_line_error(run("cnnprune.prune", "--targets", "0.5", "--steps", "0"), "--steps")


def test_unknown_choices(tmp_path: Path) -> None:
    assert_one_line_error(run("cnnprune.evaluate", "--dataset", "imagenet"), "--dataset")
    assert_one_line_error(run("cnnprune.prune", "--only", "one_shot_99", "--out", str(tmp_path)), "--only")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tmp_path: Path) -> None:
    assert_one_line_error(run("cnnprune.train", "--device", "cuda", "--out", str(tmp_path), "--train-limit", "8"),
                          "--device cuda")


def test_wrong_data_dir(tmp_path: Path) -> None:
    assert_one_line_error(run("cnnprune.evaluate", "--data-dir", str(tmp_path / "none")), "--data-dir")
    assert_one_line_error(run("cnnprune.evaluate", "--dataset", "cifar10", "--data-dir", str(tmp_path)), "test_batch")


def test_evaluate_prints_percentage(fashion_dir: Path, checkpoint: Path) -> None:
    proc = run("cnnprune.evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(fashion_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0].endswith("%") and "20 fashion-mnist" in proc.stdout
