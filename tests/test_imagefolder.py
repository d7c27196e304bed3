"""The image-folder test split: labels by sorted class folder, torchvision's evaluation transform,
one-line errors; and evaluating a torchvision network on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnprune.archs import ModelSpec
from cnnprune.data import load_split
from cnnprune.errors import CnnpruneError
from cnnprune.evaluate import main as evaluate_main


def _folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_labels_follow_sorted_class_folders_and_the_transform_is_torchvisions(tmp_path: Path) -> None:
    from torchvision import transforms

    root = _folder(tmp_path / "data", {"zebra": 2, "ant": 1})
    split = load_split("imagefolder", "test", root, size=32)
    assert split.classes == ("ant", "zebra")
    assert split.labels.tolist() == [0, 1, 1]
    x, y = next(split.batches(8))
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 1]
    reference = transforms.Compose([transforms.Resize(round(32 * 256 / 224)), transforms.CenterCrop(32),
                                    transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    with Image.open(root / "ant" / "0.png") as img:
        assert torch.equal(x[0], reference(img.convert("RGB")))


def test_a_val_subfolder_is_the_test_split(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"a": 2, "b": 2})
    _folder(tmp_path / "val", {"a": 1, "b": 1})
    assert len(load_split("imagefolder", "test", tmp_path, size=32)) == 2
    assert len(load_split("imagefolder", "train", tmp_path, size=32)) == 4


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "is not a folder"),
    (lambda p: p, "holds no class folders"),
    (lambda p: (p / "a").mkdir() or p, "has class folders but no images"),
])
def test_bad_folders_get_one_line(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(CnnpruneError, match=message):
        load_split("imagefolder", "test", make(tmp_path), size=32)


def test_class_count_must_match_the_model(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(CnnpruneError, match="2 class folders but the model has 10 classes"):
        load_split("imagefolder", "test", root, size=32, num_classes=10)


def test_a_broken_image_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path, {"a": 1})
    (root / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CnnpruneError, match=r"bad.jpg is not a readable image"):
        list(load_split("imagefolder", "test", root, size=32).batches(4))


def test_evaluate_a_torchvision_checkpoint_on_a_folder(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "data", {"a": 2, "b": 2, "c": 1})
    spec = ModelSpec("mobilenet_v2", 3, 64)
    torch.manual_seed(0)
    model = spec.build()
    torch.save(model.state_dict(), tmp_path / "m.pth")
    assert evaluate_main(["--arch", "mobilenet_v2", "--checkpoint", str(tmp_path / "m.pth"), "--dataset", "imagefolder",
                          "--data-dir", str(root), "--input-size", "64"]) == 0
    split = load_split("imagefolder", "test", root, size=64)
    with torch.no_grad():
        want = (model(next(split.batches(8))[0]).argmax(1) == split.labels).float().mean()
    assert f"{100 * float(want):.2f}%  top-1 on all 5" in capsys.readouterr().out
