"""Smoke run of ``pytest bench`` with --benchmark-disable on tiny settings (random model)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke(tmp_path: Path, checkpoint: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-q", "-p", "no:cacheprovider", "--benchmark-disable",
           f"--bench-artifacts={tmp_path / 'art'}", f"--bench-checkpoint={checkpoint}",
           "--bench-models=unpruned,one_shot_90", "--bench-batches=2", "--bench-threads=1", "--bench-rounds=1",
           "--bench-passes=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # CPU: torch, onnxruntime, sparse, torch-csr × 2 models; CUDA adds torch, torch-csr and
    # cuda-graph × 2 models and the four fp16 engines of the 2:4 comparison; the rest skip.
    import torch

    cuda = torch.cuda.is_available()
    ampere = cuda and torch.cuda.get_device_capability()[0] == 8  # PyTorch's CUTLASS 2:4 kernels
    ov = 2 * (importlib.util.find_spec("openvino") is not None)  # the optional dense engine, on the CPU
    passed, skipped = (17 + ampere + ov, 15 - ampere - ov) if cuda else (8 + ov, 24 - ov)
    assert f"{passed} passed, {skipped} skipped" in proc.stdout, proc.stdout[-800:]


def test_bench_runs_another_arch_with_random_weights(tmp_path: Path) -> None:
    """--bench-arch without a checkpoint: torchvision's seeded weights at the arch's 224×224; every
    CPU engine times it, the sparse one planned from the traced graph."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-q", "-rs", "-p", "no:cacheprovider",
           "--benchmark-disable", f"--bench-artifacts={tmp_path / 'art'}", "--bench-arch=mobilenet_v2",
           "--bench-models=unpruned,one_shot_90", "--bench-threads=1", "--bench-rounds=1", "--bench-passes=1",
           "--bench-devices=cpu", "--bench-engines=torch,onnxruntime,sparse", "--bench-batches=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "6 passed, 4 skipped" in proc.stdout, proc.stdout[-800:]  # the CUDA-only 2:4 cases skip
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["model"] == {"arch": "mobilenet_v2", "num_classes": 1000, "input_size": 224}
    assert manifest["seed"] == 0
