"""Smoke run of ``pytest bench`` with --benchmark-disable on tiny settings (random model)."""

from __future__ import annotations

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
    passed, skipped = (17 + ampere, 11 - ampere) if cuda else (8, 20)
    assert f"{passed} passed, {skipped} skipped" in proc.stdout, proc.stdout[-800:]
