"""The networks cnnprune prunes, exports and measures: a registry, and what a model is made of.

An :class:`Arch` is data: the torchvision builder, the default input size (pixels per side)
and the key of the classifier's weight, whose first dimension gives a checkpoint's class
count. ``resnet18-cifar`` is the report's network (torchvision's resnet18 with a 3×3
stride-1 stem, see :mod:`cnnprune.model`); every other entry is torchvision's own model,
built with ``torchvision.models.get_model(name, weights=None, num_classes=K)`` so a user's
state_dict of that architecture loads with ``strict=True``.

A :class:`ModelSpec` (arch, classes, input size) is what the prune step records in its
manifest; every later step (export, benchmark, memory, report) reads it from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from cnnprune.errors import CnnpruneError
from cnnprune.fold import ARCH

DEFAULT_ARCH = ARCH  # the report's network: what cnnprune.fold folds


@dataclass(frozen=True)
class Arch:
    """One architecture: ``builder`` (a torchvision model name), ``input_size`` (default side in
    pixels), ``classifier`` (the state_dict key of the last Linear weight), ``cifar_stem`` (the
    report's 3×3 stride-1 conv1) and ``native`` (the native sparse engine runs it)."""

    name: str
    builder: str
    input_size: int
    classifier: str
    cifar_stem: bool = False
    native: bool = False


def _torchvision(name: str, classifier: str) -> Arch:
    return Arch(name, name, 224, classifier)


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch(DEFAULT_ARCH, "resnet18", 32, "fc.weight", cifar_stem=True, native=True),
    _torchvision("resnet18", "fc.weight"),
    _torchvision("resnet34", "fc.weight"),
    _torchvision("resnet50", "fc.weight"),
    _torchvision("resnet101", "fc.weight"),
    _torchvision("wide_resnet50_2", "fc.weight"),
    _torchvision("resnext50_32x4d", "fc.weight"),
    _torchvision("vgg11_bn", "classifier.6.weight"),
    _torchvision("vgg16_bn", "classifier.6.weight"),
    _torchvision("mobilenet_v2", "classifier.1.weight"),
    _torchvision("mobilenet_v3_large", "classifier.3.weight"),
    _torchvision("efficientnet_b0", "classifier.1.weight"),
    _torchvision("densenet121", "classifier.weight"),
    _torchvision("regnet_y_400mf", "fc.weight"),
    _torchvision("convnext_tiny", "classifier.2.weight"),
)}


def get_arch(name: str) -> Arch:
    """The registry entry; a one-line error listing the known names otherwise."""
    try:
        return ARCHS[name]
    except KeyError:
        raise CnnpruneError(f"--arch {name!r} is not one of {', '.join(ARCHS)}") from None


def build(arch: str, num_classes: int) -> nn.Module:
    """``arch`` with ``num_classes`` outputs, torchvision's seeded initialisation, eval mode."""
    from torchvision.models import get_model

    a = get_arch(arch)
    model = get_model(a.builder, weights=None, num_classes=num_classes)
    if a.cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return model.eval()


def classes_in(arch: str, state: dict[str, torch.Tensor], source: str) -> int:
    """The class count of a state_dict: rows of its classifier weight."""
    key = get_arch(arch).classifier
    weight = state.get(key)
    if weight is None or weight.ndim != 2:
        raise CnnpruneError(f"{source} has no 2-D {key}: it is not a {arch} state_dict "
                            f"(pass the --arch it was trained as; known: {', '.join(ARCHS)})")
    return int(weight.shape[0])


def check_weights_source(arch: str, weights: str, checkpoint: str | None, needs_training_data: tuple[str, ...] = ()) -> None:
    """The rules every command shares on where a network's weights come from (one-line errors):
    random weights or a checkpoint, not both; only the report's network has an embedded
    checkpoint; the options in ``needs_training_data`` (flags) train or recalibrate, which needs
    training images at the network's input size: the report's network only, today."""
    if weights == "random" and checkpoint:
        raise CnnpruneError("--weights random and --checkpoint exclude each other: give one")
    if arch != DEFAULT_ARCH and weights == "checkpoint" and not checkpoint:
        raise CnnpruneError(f"--arch {arch} has no embedded checkpoint: pass --checkpoint F (a torchvision "
                            f"{arch} state_dict) or --weights random [--seed S]")
    if arch != DEFAULT_ARCH and needs_training_data:
        raise CnnpruneError(f"{', '.join(needs_training_data)} need training data at {arch}'s input size; today "
                            f"they run for {DEFAULT_ARCH} only")


def random_classes(arch: str) -> int:
    """The class count of seeded random weights when none is given: CIFAR's 10 for the report's
    network, ImageNet's 1000 for torchvision's."""
    return 10 if arch == DEFAULT_ARCH else 1000


def input_size_checked(size: int, source: str) -> int:
    """Input sides below 32 px collapse the deeper stages of every listed network to nothing."""
    if not 32 <= size <= 1024:
        raise CnnpruneError(f"{source}: input size {size} is outside 32–1024 pixels")
    return size


@dataclass(frozen=True)
class ModelSpec:
    """What a run's models are: architecture, class count, input side (pixels)."""

    arch: str = DEFAULT_ARCH
    num_classes: int = 10
    input_size: int = 32

    def __post_init__(self) -> None:
        get_arch(self.arch)
        if self.num_classes < 1:
            raise CnnpruneError(f"a model needs at least one class, got {self.num_classes}")
        input_size_checked(self.input_size, self.arch)

    @classmethod
    def of(cls, arch: str, state: dict[str, torch.Tensor], source: str, input_size: int | None = None) -> ModelSpec:
        """The spec of ``state``: classes from its classifier, input size given or the arch's default."""
        return cls(arch, classes_in(arch, state, source), input_size or get_arch(arch).input_size)

    @classmethod
    def from_record(cls, record: dict | None) -> ModelSpec:
        """From a manifest's ``model`` entry; manifests written before it existed mean the report's model."""
        if not isinstance(record, dict):
            return cls()
        try:
            return cls(str(record["arch"]), int(record["num_classes"]), int(record["input_size"]))
        except (KeyError, TypeError, ValueError):
            raise CnnpruneError("the manifest's model entry is malformed; rerun `python -m cnnprune.prune --fresh`")\
                from None

    def record(self) -> dict:
        return asdict(self)

    @property
    def info(self) -> Arch:
        return get_arch(self.arch)

    @property
    def is_default(self) -> bool:
        """The report's network at its own size: the case every engine runs."""
        return self.arch == DEFAULT_ARCH and self.input_size == 32

    @property
    def label(self) -> str:
        return f"{self.arch}, {self.num_classes} classes, {self.input_size}×{self.input_size}"

    def build(self) -> nn.Module:
        return build(self.arch, self.num_classes)

    def example(self, batch: int, seed: int = 0) -> torch.Tensor:
        """A seeded random input batch (N, 3, S, S), float32."""
        return torch.randn(batch, 3, self.input_size, self.input_size, generator=torch.Generator().manual_seed(seed))
