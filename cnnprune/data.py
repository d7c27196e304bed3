"""Test and training data: Fashion-MNIST (IDX files, the offline default) and CIFAR-10.

Both come out as the same thing, a :class:`Split` of uint8 images (N, C, 32, 32) and int64
labels, so the network and its cost are identical whichever dataset is used. Fashion-MNIST is
padded 28→32 with zeros (its background) and repeated to 3 channels at batch time.

CIFAR-10 batch files are Python pickles; they are read with :class:`CifarUnpickler`, which
only admits what the real format holds, so a crafted file can never run code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from cnnprune.batches import batch_spans
from cnnprune.config import DATASETS
from cnnprune.errors import CnnpruneError

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
NUM_CLASSES = 10

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
# Mean/std of the zero-padded 32×32 Fashion-MNIST training images (pixel values in [0, 1]),
# measured once with `cnnprune.data.channel_stats` on the 60,000 training images.
FASHION_MNIST_MEAN = (0.2190,) * 3
FASHION_MNIST_STD = (0.3318,) * 3

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    # the first 2,000 training images, shipped in the package for BatchNorm recalibration offline
    "calibration": ("calibration-images-idx3-ubyte.gz", "calibration-labels-idx1-ubyte.gz"),
}
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_TAR_MD5 = "c58f30108f718f92721af3b95e74349a"


@dataclass(frozen=True)
class Split:
    """One split of a dataset held in memory.

    ``images`` is uint8 (N, C, 32, 32) with C = 1 (Fashion-MNIST, repeated to 3 at batch time)
    or 3; ``labels`` is int64 (N,). ``mean``/``std`` are per RGB channel, for pixels in [0, 1].
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def normalize(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, 32, 32) → float32 (N, 3, 32, 32), normalised as the network expects."""
        x = images_u8.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (inputs, labels) batches in order; the last batch may be short (nothing dropped)."""
        for start, stop in batch_spans(len(self), batch_size, limit):
            yield self.normalize(self.images[start:stop]), self.labels[start:stop]

    def subset(self, n: int) -> Split:
        return Split(self.name, self.images[:n], self.labels[:n], self.mean, self.std, self.source)


# ---------------------------------------------------------------- IDX (Fashion-MNIST)

_IDX_DTYPES = {0x08: np.uint8}


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """Parse an IDX file's bytes (already decompressed) into an array; one-line errors."""
    if len(data) < 4:
        raise CnnpruneError(f"{name} is too short to be an IDX file ({len(data)} bytes)")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise CnnpruneError(f"{name} is not a uint8 IDX file (bad magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CnnpruneError(f"{name} is truncated inside its IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise CnnpruneError(
            f"{name} holds {len(data) - header} bytes of data but its header {shape} needs "
            f"{expected}; the file is truncated or corrupt, fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed (``.gz``) or raw."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CnnpruneError(f"{path} does not exist") from None
    except OSError as exc:
        raise CnnpruneError(f"cannot read {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, ValueError) as exc:
            raise CnnpruneError(f"{path} is a damaged gzip file ({exc}); fetch it again") from None
    return parse_idx(raw, str(path))


def _embedded_fashion_mnist_dir() -> Path:
    return Path(str(resources.files("cnnprune") / "assets" / "fashion-mnist"))


def _find_idx(folder: Path, filename: str) -> Path | None:
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_fashion_mnist(split: str, data_dir: Path | None = None) -> Split:
    """Load a Fashion-MNIST split from IDX files, padded to 32×32.

    Without ``data_dir`` the test split comes from the copy shipped in the package and the
    training split from Debian's ``dataset-fashion-mnist`` folder.
    """
    image_name, label_name = FASHION_MNIST_FILES[split]
    if data_dir is None:
        folders = [DEFAULT_FASHION_MNIST_DIR, _embedded_fashion_mnist_dir()]
    else:
        folders = [Path(data_dir)]
        if not folders[0].is_dir():
            raise CnnpruneError(f"--data-dir {data_dir} is not a folder; point it at the folder "
                                f"holding {image_name} and {label_name}")
    for folder in folders:
        image_path, label_path = _find_idx(folder, image_name), _find_idx(folder, label_name)
        if image_path and label_path:
            break
    else:
        where = " or ".join(str(f) for f in folders)
        hint = ("install it with `apt-get install dataset-fashion-mnist` or pass --data-dir"
                if data_dir is None else "pass the folder that holds the four IDX .gz files")
        raise CnnpruneError(f"Fashion-MNIST {split} files {image_name}/{label_name} not found in {where}; {hint}")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise CnnpruneError(f"{image_path} holds images of shape {images.shape[1:]}, expected 28×28")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise CnnpruneError(f"{label_path} holds {labels.shape[0]} labels for {images.shape[0]} images in {image_path}")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise CnnpruneError(f"{label_path} has label {int(labels.max())}; Fashion-MNIST labels are 0–9")
    padded = np.zeros((images.shape[0], 1, 32, 32), dtype=np.uint8)
    padded[:, 0, 2:30, 2:30] = images
    return Split("fashion-mnist", torch.from_numpy(padded), torch.from_numpy(labels.astype(np.int64)),
                 FASHION_MNIST_MEAN, FASHION_MNIST_STD, str(image_path.parent))


# ---------------------------------------------------------------- CIFAR-10 (pickles)


class CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds what a CIFAR-10 batch file holds.

    Dicts, lists, bytes/str and ints need no globals at all; the only globals admitted are the
    ones NumPy uses to rebuild an ndarray. Anything else (os.system, builtins.eval, …) is refused
    before it can be called.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2 (str → bytes, no side effects)
    }

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file → (uint8 images N×3×32×32, int64 labels N)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CnnpruneError(f"CIFAR-10 batch {path} does not exist") from None
    except OSError as exc:
        raise CnnpruneError(f"cannot read CIFAR-10 batch {path}: {exc.strerror}") from None
    try:
        obj = CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise CnnpruneError(f"{path} is not a safe CIFAR-10 batch file: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any malformed pickle
        raise CnnpruneError(f"{path} is not a readable CIFAR-10 batch file (truncated or corrupt?): "
                            f"{type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise CnnpruneError(f"{path} holds a {type(obj).__name__}, expected a CIFAR-10 batch dict")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise CnnpruneError(f"{path}: 'data' must be a uint8 array N×3072, got {type(data).__name__} {shape}")
    if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise CnnpruneError(f"{path}: 'labels' must be a list of ints")
    if len(labels) != data.shape[0]:
        raise CnnpruneError(f"{path}: {len(labels)} labels for {data.shape[0]} images")
    lab = np.asarray(labels, dtype=np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= NUM_CLASSES):
        raise CnnpruneError(f"{path}: labels must be 0–9, found {int(lab.min())}..{int(lab.max())}")
    return data.reshape(-1, 3, 32, 32), lab


def md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def resolve_cifar_dir(data_dir: Path) -> Path:
    """Accept either the ``cifar-10-batches-py`` folder itself or its parent."""
    data_dir = Path(data_dir)
    if (data_dir / CIFAR10_FOLDER).is_dir():
        return data_dir / CIFAR10_FOLDER
    return data_dir


def download_cifar10(root: Path) -> Path:
    """Download and unpack CIFAR-10 (md5-checked) with torchvision's downloader; needs internet."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(CIFAR10_URL, str(root), md5=CIFAR10_TAR_MD5)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise CnnpruneError(f"could not download CIFAR-10 into {root} ({type(exc).__name__}); "
                            "download cifar-10-python.tar.gz elsewhere and pass --data-dir") from None
    return root / CIFAR10_FOLDER


def load_cifar10(split: str, data_dir: Path | None, download: bool = False) -> Split:
    """Load a CIFAR-10 split from a standard ``cifar-10-batches-py`` folder.

    Official files are checked against their md5; files that differ (e.g. a subset) are still
    read through the safe unpickler and validated, and reported as not official in ``source``.
    """
    if data_dir is None:
        raise CnnpruneError("CIFAR-10 needs --data-dir pointing at a cifar-10-batches-py folder "
                            "(or --download on a machine with internet)")
    folder = resolve_cifar_dir(Path(data_dir))
    names = CIFAR10_FILES[split]
    if not all((folder / n).is_file() for n in names):
        if download:
            folder = download_cifar10(Path(data_dir))
        else:
            missing = [n for n in names if not (folder / n).is_file()]
            raise CnnpruneError(f"--data-dir {data_dir}: CIFAR-10 {split} file(s) {', '.join(missing)} not found; "
                                f"point it at the {CIFAR10_FOLDER} folder (or add --download)")
    images, labels, official = [], [], True
    for n in names:
        x, y = read_cifar_batch(folder / n)
        images.append(x)
        labels.append(y)
        official &= md5_file(folder / n) == CIFAR10_MD5[n]
    tag = "official md5" if official else "md5 differs from the official files"
    return Split("cifar10", torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                 CIFAR10_MEAN, CIFAR10_STD, f"{folder} ({tag})")


def load_split(dataset: str, split: str, data_dir: Path | None = None, download: bool = False,
               size: int = 224, num_classes: int | None = None) -> Split:
    """Load ``split`` ("train" or "test") of ``dataset`` ("fashion-mnist", "cifar10", or
    "imagefolder": read lazily at ``size`` pixels, ``num_classes`` class folders checked)."""
    if dataset == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if dataset == "cifar10":
        return load_cifar10(split, data_dir, download)
    if dataset == "imagefolder":
        from cnnprune.imagefolder import load_folder

        return load_folder(data_dir, split, size, num_classes)  # type: ignore[return-value]
    raise CnnpruneError(f"--dataset {dataset!r} is unknown; choose one of {', '.join(DATASETS)}")


def calibration_split(dataset: str, data_dir: Path | None, n: int) -> Split:
    """The first ``n`` training images, for BatchNorm recalibration (never test images): from the
    training split where it is installed, else, for Fashion-MNIST without ``data_dir``, from the
    sample shipped in the package."""
    try:
        split = load_split(dataset, "train", data_dir)
    except CnnpruneError:
        if dataset != "fashion-mnist" or data_dir is not None:
            raise
        split = load_fashion_mnist("calibration")
    if n > len(split):
        raise CnnpruneError(f"--recalibrate-bn {n}: only {len(split):,} training images are available ({split.source}); "
                            "ask for fewer, or install the full training split (apt-get install dataset-fashion-mnist, "
                            "or --data-dir)")
    return split.subset(n)


def channel_stats(split: Split) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a split's pixels in [0, 1] (how the constants above were made)."""
    x = split.images.double().div(255.0)
    dims = (0, 2, 3)
    return x.mean(dims).tolist(), x.std(dims).tolist()


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """Standard CIFAR augmentation on a uint8 batch: zero-pad, random 32×32 crop, random h-flip."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    out = torch.empty_like(images)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, dy:dy + h, dx:dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out
