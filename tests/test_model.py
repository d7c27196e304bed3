from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from cnnprune.errors import CnnpruneError
from cnnprune.model import NUM_PARAMETERS, build_model, load_model


def test_architecture_matches_the_report() -> None:
    model = build_model()
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMETERS == 11_173_962
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
    assert isinstance(model.maxpool, torch.nn.MaxPool2d)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s},
                                  lambda s: {f"module.{k}": v for k, v in s.items()},
                                  lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}}])
def test_accepted_checkpoint_layouts_round_trip(tmp_path: Path, random_state, wrap) -> None:
    path = tmp_path / "c.pth"
    torch.save(wrap(random_state), path)
    loaded = load_model(path).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in random_state.items())


def test_plain_torchvision_keys(random_state) -> None:
    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv.load_state_dict(random_state)


def test_mismatch_names_keys(tmp_path: Path, random_state) -> None:
    bad = dict(random_state)
    bad.pop("fc.bias")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "b.pth")
    with pytest.raises(CnnpruneError, match=r"missing 1 key\(s\): fc.bias.*unexpected 1 key\(s\): extra.weight"):
        load_model(tmp_path / "b.pth")
    wrong = dict(random_state)
    wrong["conv1.weight"] = torch.zeros(64, 3, 7, 7)  # torchvision's ImageNet stem, not the CIFAR one
    torch.save(wrong, tmp_path / "w.pth")
    with pytest.raises(CnnpruneError, match=r"conv1.weight has shape \(64, 3, 7, 7\), the CIFAR ResNet18"):
        load_model(tmp_path / "w.pth")
    # another class count is another model, not an error (CIFAR-100): only a half-changed classifier is
    wrong = dict(random_state)
    wrong["fc.weight"] = torch.zeros(100, 512)
    torch.save(wrong, tmp_path / "c.pth")
    with pytest.raises(CnnpruneError, match="fc.bias has shape"):
        load_model(tmp_path / "c.pth")


class Payload:
    """Stands for any object a malicious checkpoint could smuggle in."""


def test_unsafe_pickle_refused(tmp_path: Path) -> None:
    torch.save({"x": Payload()}, tmp_path / "u.pth")
    with pytest.raises(CnnpruneError, match="refusing to unpickle"):
        load_model(tmp_path / "u.pth")


def test_truncated_and_missing_checkpoint(tmp_path: Path, checkpoint: Path) -> None:
    (tmp_path / "t.pth").write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CnnpruneError, match="truncated or corrupt"):
        load_model(tmp_path / "t.pth")
    with pytest.raises(CnnpruneError, match="does not exist"):
        load_model(tmp_path / "none.pth")


def test_channels_last_checkpoint_loads_contiguous(tmp_path: Path, random_state) -> None:
    from cnnprune.model import load_state_dict

    cl = {k: (v.to(memory_format=torch.channels_last) if v.ndim == 4 else v) for k, v in random_state.items()}
    assert not cl["conv1.weight"].is_contiguous()
    torch.save(cl, tmp_path / "cl.pth")
    state = load_state_dict(tmp_path / "cl.pth")
    assert all(v.is_contiguous() for v in state.values())
    assert torch.equal(state["conv1.weight"], random_state["conv1.weight"])


@pytest.mark.parametrize("arch", ["resnet18-cifar", "regnet_y_400mf"])
def test_checked_model_copies_the_state_unless_it_owns_it(arch: str) -> None:
    """The module is built without random weights (on the meta device; RegNet's constructor
    computes with tensors, so it is built for real) and then holds the state's values."""
    from cnnprune.model import checked_model

    state = {k: v.clone() for k, v in build_model(7, arch).state_dict().items()}
    copied, owned = checked_model(state, "s", arch), checked_model(state, "s", arch, own=True)
    for model in (copied, owned):
        assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    key = next(k for k in state if k.endswith("weight"))
    assert copied.state_dict()[key].data_ptr() != state[key].data_ptr()
    assert owned.state_dict()[key].data_ptr() == state[key].data_ptr()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copied(x), owned(x))
