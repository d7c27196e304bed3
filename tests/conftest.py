"""Shared fixtures: tiny data written in the real formats, and a random ResNet18 checkpoint."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnprune.model import build_model


@pytest.fixture(scope="session", autouse=True)
def own_plan_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Kernel builds and cached plans in a folder of this test session (subprocesses inherit
    it): a plan that an earlier run calibrated on a busy machine (Winograd where the sparse
    kernel usually wins) must not decide what a test sees."""
    os.environ["CNNPRUNE_CACHE"] = str(tmp_path_factory.mktemp("cnnprune-cache"))


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture
def fashion_dir(tmp_path: Path) -> Path:
    """A Fashion-MNIST folder with 20 test and 40 train images in the real IDX .gz format."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for split, n in (("t10k", 20), ("train", 40)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return folder


def cifar_batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A cifar-10-batches-py folder with tiny batches pickled like the real (protocol 2) files."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(cifar_batch(8, i), protocol=2))
    return folder


@pytest.fixture(scope="session")
def random_state() -> dict[str, torch.Tensor]:
    """A seeded random CIFAR ResNet18 state_dict with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = build_model()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, random_state) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
    torch.save(random_state, path)
    return path


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """The six pruned checkpoints and all exports of the random model (made once per session)."""
    from cnnprune.export import ExportConfig, run_export
    from cnnprune.prune import PruneConfig, run_pruning

    folder = tmp_path_factory.mktemp("artifacts")
    run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(folder)), progress=False)
    run_export(ExportConfig(src=str(folder), out=str(folder), sparse=True), progress=False)
    return folder
