"""The report's network (the PyTorch_CIFAR10 ResNet18) and any listed arch: loading checkpoints into them.

torchvision's resnet18 with conv1 replaced by a 3×3 stride-1 conv (no bias), the maxpool
kept, and a 10-class fc: 11,173,962 parameters and torchvision's key names, so a checkpoint
of the widely shared PyTorch_CIFAR10 weights (and plain ``torchvision.models.resnet18``
state_dicts of the same shape) load as they are.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnprune.archs import DEFAULT_ARCH, ModelSpec, build, classes_in
from cnnprune.errors import CnnpruneError
from cnnprune.fileio import safe_torch_load

NUM_PARAMETERS = 11_173_962
DEFAULT_CHECKPOINT_NAME = "resnet18_fashion_mnist.pth"


def build_model(num_classes: int = 10, arch: str = DEFAULT_ARCH) -> nn.Module:
    """``arch`` (default: the CIFAR ResNet18 of the report), randomly initialised, in eval mode."""
    return build(arch, num_classes)


def default_checkpoint() -> Path:
    """Path of the trained Fashion-MNIST checkpoint shipped inside the package."""
    return Path(str(resources.files("cnnprune") / "assets" / DEFAULT_CHECKPOINT_NAME))


def resolve_checkpoint(path: str | os.PathLike[str] | None) -> Path:
    """The user's checkpoint, or the embedded default; one-line error if neither exists."""
    if path is not None:
        return Path(path)
    default = default_checkpoint()
    if not default.is_file():
        raise CnnpruneError(
            f"the embedded default checkpoint {default} is missing; train it with "
            "`python -m cnnprune.train` or pass --checkpoint PATH")
    return default


def extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Accept a plain state_dict, ``{"state_dict": …}`` / ``{"model": …}`` and ``module.`` prefixes."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise CnnpruneError(f"{source} does not hold a state_dict (a dict of parameter names to tensors)")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CnnpruneError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor")
        for prefix in ("module.", "_orig_mod.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str = DEFAULT_ARCH) -> None:
    """Raise a one-line error naming the first missing/unexpected keys or mismatched shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        pruned = [k for k in unexpected if k.endswith(("_orig", "_mask"))]
        if pruned:
            raise CnnpruneError(f"{source} still holds pruning reparametrisation keys ({pruned[0]}, …); "
                                "make it permanent with torch.nn.utils.prune.remove first")
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:3])}")
        raise CnnpruneError(f"{source} does not match {_arch_label(arch)}: {'; '.join(parts)} "
                            "(pass the --arch it was trained as)")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CnnpruneError(f"{source}: {key} has shape {tuple(state[key].shape)}, {_arch_label(arch)} "
                                f"needs {tuple(tensor.shape)}")


def _arch_label(arch: str) -> str:
    return "the CIFAR ResNet18 (3×3 stride-1 conv1)" if arch == DEFAULT_ARCH else f"torchvision's {arch}"


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (weights_only) and return its state_dict in float32, standard
    (contiguous) memory format: a model trained channels-last saves channels-last tensors."""
    state = extract_state_dict(safe_torch_load(path), str(path))
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def checked_skeleton(state: dict[str, torch.Tensor], source: str, arch: str = DEFAULT_ARCH) -> nn.Module:
    """``arch`` on the meta device (shapes, no data; built for real where the constructor
    needs data) with as many classes as ``state`` has, ``state`` checked against it (a
    one-line error otherwise)."""
    classes = classes_in(arch, state, source)
    try:
        with torch.device("meta"):
            model = build_model(classes, arch)
    except NotImplementedError:  # a constructor that computes with tensors (RegNet's widths)
        model = build_model(classes, arch)
    check_state_dict(model, state, source, arch)
    return model


def checked_model(state: dict[str, torch.Tensor], source: str, arch: str = DEFAULT_ARCH,
                  own: bool = False) -> nn.Module:
    """``arch`` with as many classes as ``state`` has, ``state`` loaded (strictly), eval mode.

    The module is built on the meta device, so no random initialisation runs only to be
    overwritten (torchvision's ResNet-50 initialisation took 0.5 s of every load), and is then
    given ``state``'s tensors: copies, or with ``own`` the tensors themselves (the caller
    read ``state`` for this model alone and will not touch it again)."""
    model = checked_skeleton(state, source, arch)
    model.load_state_dict(state if own else {k: v.clone() for k, v in state.items()}, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = build_model(classes_in(arch, state, source), arch)  # a tensor the state does not hold (a non-persistent buffer)
        model.load_state_dict(state)
    return model.eval()


def load_model(path: str | os.PathLike[str] | None = None, arch: str = DEFAULT_ARCH) -> nn.Module:
    """Build ``arch`` and load ``path`` (default: the embedded checkpoint), eval mode."""
    ckpt = resolve_checkpoint(path)
    return checked_model(load_state_dict(ckpt), str(ckpt), arch, own=True)


def spec_of_folder(folder: str | os.PathLike[str]) -> ModelSpec:
    """The model spec an artifacts folder's ``manifest.json`` records (the report's model if none)."""
    import json

    path = Path(folder) / "manifest.json"
    try:
        record = json.loads(path.read_text()).get("model") if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise CnnpruneError(f"{path} is not valid JSON; rerun `python -m cnnprune.prune --fresh`") from None
    return ModelSpec.from_record(record)


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear, in definition order: the layers whose ``weight`` the report pruned."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
