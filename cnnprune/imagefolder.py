"""Test images for any architecture: a folder of class folders (torchvision's ``ImageFolder``
layout: ImageNet val, Imagenette, a user's own data), read lazily batch by batch.

Labels are the class folders' positions in sorted order, as ``torchvision.datasets.ImageFolder``
numbers them (the order of ImageNet's class indices when the folders are its synset ids). Each
image is resized so its shorter side is ``size·256/224`` pixels, centre-cropped to ``size``, and
normalised with ImageNet's mean and std: the evaluation transform of torchvision's classification
weights. A folder of 50,000 ImageNet images would be 7.5 GB as uint8 at 224×224, so images are
decoded per batch, never held all at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnprune.batches import batch_spans
from cnnprune.errors import CnnpruneError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class FolderSplit:
    """Image paths and their labels; ``batches`` decodes and transforms as it goes."""

    name: str
    paths: tuple[Path, ...]
    labels: torch.Tensor
    classes: tuple[str, ...]
    size: int
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    def _image(self, path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError
        from torchvision.transforms import functional as F

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img = F.resize(img, round(self.size * 256 / 224))
                img = F.center_crop(img, [self.size, self.size])
                return F.normalize(F.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
        except (UnidentifiedImageError, OSError) as exc:
            raise CnnpruneError(f"{path} is not a readable image ({type(exc).__name__}); remove or replace it") \
                from None

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs (N, 3, S, S) float32, labels) in order; the last batch may be short."""
        for start, stop in batch_spans(len(self), batch_size, limit):
            yield torch.stack([self._image(p) for p in self.paths[start:stop]]), self.labels[start:stop]


def _root(data_dir: Path, split: str) -> Path:
    """``DIR/val`` (test) or ``DIR/train`` where the folder has them (Imagenette), else ``DIR``."""
    sub = data_dir / ("val" if split == "test" else split)
    return sub if sub.is_dir() else data_dir


def load_folder(data_dir: Path | None, split: str, size: int, num_classes: int | None = None) -> FolderSplit:
    """The images under ``data_dir`` (one folder per class); one-line errors for a missing or
    empty folder, and for a class count other than the model's (``num_classes``)."""
    if data_dir is None or not data_dir.is_dir():
        raise CnnpruneError(f"--data-dir {data_dir} is not a folder; --dataset imagefolder needs one folder per "
                            "class, each holding that class's images")
    root = _root(data_dir, split)
    classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    if not classes:
        raise CnnpruneError(f"{root} holds no class folders; put each class's images in a folder of its own")
    if num_classes is not None and len(classes) != num_classes:
        raise CnnpruneError(f"{root} has {len(classes)} class folders but the model has {num_classes} classes; "
                            "give a folder with one subfolder per model class (label = sorted position)")
    paths, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise CnnpruneError(f"{root} has class folders but no images ({', '.join(EXTENSIONS[:3])}, …)")
    return FolderSplit(f"{root.name} (image folder)", tuple(paths), torch.tensor(labels, dtype=torch.int64),
                       classes, size, str(root))
