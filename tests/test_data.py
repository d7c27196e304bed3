from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnprune.data import (
    CifarUnpickler,
    load_cifar10,
    load_fashion_mnist,
    load_split,
    parse_idx,
    random_crop_flip,
    read_cifar_batch,
)
from cnnprune.errors import CnnpruneError
from tests.conftest import cifar_batch, write_idx


def test_fashion_mnist_pads_to_32_and_keeps_pixels(fashion_dir: Path) -> None:
    split = load_fashion_mnist("test", fashion_dir)
    assert split.images.shape == (20, 1, 32, 32) and split.images.dtype == torch.uint8
    raw = np.frombuffer(gzip.decompress((fashion_dir / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    assert torch.equal(split.images[:, 0, 2:30, 2:30], torch.from_numpy(raw.reshape(20, 28, 28).copy()))
    assert split.images[:, :, :2].sum() == 0 and split.images[:, :, :, 30:].sum() == 0
    x, y = next(split.batches(8))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and torch.equal(x[:, 0], x[:, 2])


def test_batches_keep_every_image(fashion_dir: Path) -> None:
    split = load_fashion_mnist("test", fashion_dir)
    assert sum(len(y) for _, y in split.batches(6)) == 20


def test_embedded_test_split_is_complete() -> None:
    split = load_split("fashion-mnist", "test")
    assert len(split) == 10_000 and int(split.labels.bincount().min()) == 1000


def test_idx_raw_and_truncated(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", np.arange(12).reshape(3, 4), compress=False)
    assert parse_idx((tmp_path / "a").read_bytes(), "a").shape == (3, 4)
    with pytest.raises(CnnpruneError, match="truncated or corrupt"):
        parse_idx((tmp_path / "a").read_bytes()[:-1], "a")
    with pytest.raises(CnnpruneError, match="bad magic"):
        parse_idx(b"\x01\x02\x03\x04" + b"\0" * 8, "b")


def test_fashion_missing_folder_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(CnnpruneError, match="--data-dir"):
        load_fashion_mnist("test", tmp_path / "nope")
    with pytest.raises(CnnpruneError, match="not found"):
        load_fashion_mnist("test", tmp_path)


def test_cifar_folder_loads_and_validates(cifar_dir: Path) -> None:
    split = load_cifar10("test", cifar_dir)
    assert split.images.shape == (8, 3, 32, 32) and "md5 differs" in split.source
    assert load_cifar10("train", cifar_dir.parent).images.shape[0] == 40


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_crafted_cifar_pickle_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch = cifar_batch(2)
    batch[b"extra"] = _Evil(str(marker))
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CnnpruneError, match="not allowed"):
        read_cifar_batch(path)
    assert not marker.exists()


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.__setitem__(b"data", np.zeros((2, 100), np.uint8)), "N×3072"),
    (lambda b: b.__setitem__(b"data", np.zeros((2, 3072), np.float32)), "uint8"),
    (lambda b: b.__setitem__(b"labels", [0, 11]), "0–9"),
    (lambda b: b.__setitem__(b"labels", [0]), "labels for"),
])
def test_cifar_bad_contents(tmp_path: Path, mutate, message: str) -> None:
    batch = cifar_batch(2)
    mutate(batch)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CnnpruneError, match=message):
        read_cifar_batch(path)


def test_cifar_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CnnpruneError, match="test_batch"):
        load_cifar10("test", tmp_path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_idx_parser_fuzz(data: bytes) -> None:
    try:
        parse_idx(data, "fuzz")
    except CnnpruneError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_cifar_reader_fuzz(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "batch"
    path.write_bytes(data)
    try:
        read_cifar_batch(path)
    except CnnpruneError:
        pass


def test_unpickler_allows_only_numpy_reconstruction() -> None:
    import io

    with pytest.raises(pickle.UnpicklingError):
        CifarUnpickler(io.BytesIO(pickle.dumps(print))).load()


def test_random_crop_flip_keeps_shape_and_content() -> None:
    x = torch.randint(0, 255, (4, 1, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0, flip=False)
    assert torch.equal(out, x)
    assert random_crop_flip(x, torch.Generator().manual_seed(0)).shape == x.shape
