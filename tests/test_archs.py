"""Every listed architecture through prune → export at a small input size: exact global magnitude
pruning, dense files torchvision loads strictly, ONNX equal to eager, CSR bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.models import get_model

from cnnprune.archs import ARCHS, DEFAULT_ARCH, ModelSpec, classes_in
from cnnprune.errors import CnnpruneError
from cnnprune.export import ExportConfig, run_export
from cnnprune.model import load_state_dict, prunable_modules, spec_of_folder
from cnnprune.prune import PruneConfig, run_pruning

# resnet101 and wide_resnet50_2 are resnet50's Bottleneck blocks, only more and wider (43–67 M weights,
# about a minute each here); VGG's 129–138 M weights take 2–3 minutes each at 224, the smallest size its
# 7×7 adaptive pool exports to ONNX from. CI runs the rest; `pytest -m slow` runs these.
SLOW = {"resnet101", "wide_resnet50_2", "vgg11_bn", "vgg16_bn"}
TEST_SIZE = {"vgg11_bn": 224, "vgg16_bn": 224}
TORCHVISION = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
               for name in ARCHS if name != DEFAULT_ARCH]


def _prunable_keys(model: torch.nn.Module) -> list[str]:
    return [f"{name}.weight" for name, _ in prunable_modules(model)]


def _assert_global_magnitude(source: dict, pruned: dict, keys: list[str], target: float) -> None:
    """Exactly ``target`` of the conv/linear weights zero, every pruned |w| ≤ every kept |w|,
    kept weights and all other tensors unchanged."""
    flat_src = torch.cat([source[k].flatten() for k in keys])
    flat = torch.cat([pruned[k].flatten() for k in keys])
    zero = flat == 0
    assert int(zero.sum()) == round(target * flat.numel())
    assert flat_src[zero].abs().max() <= flat_src[~zero].abs().min()
    assert torch.equal(flat[~zero], flat_src[~zero])
    for key in source.keys() - set(keys):
        assert torch.equal(source[key], pruned[key]), key


@pytest.mark.parametrize("arch", TORCHVISION)
def test_every_arch_prunes_and_exports(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(3)
    user = get_model(arch, weights=None, num_classes=7).state_dict()
    checkpoint = tmp_path / "user.pth"
    torch.save(user, checkpoint)
    size = TEST_SIZE.get(arch, 32)
    run_pruning(PruneConfig(checkpoint=str(checkpoint), arch=arch, input_size=size, out=str(tmp_path),
                            only=("one_shot_90",)), progress=False)
    assert spec_of_folder(tmp_path) == ModelSpec(arch, 7, size)
    record = run_export(ExportConfig(src=str(tmp_path), sparse=True), progress=False)
    pruned = load_state_dict(tmp_path / "one_shot_90.pth")
    model = get_model(arch, weights=None, num_classes=7)
    model.load_state_dict(torch.load(tmp_path / "one_shot_90.pth", weights_only=True), strict=True)
    _assert_global_magnitude(user, pruned, _prunable_keys(model), 0.9)
    entry = record["models"]["one_shot_90"]
    # an initialisation scales each layer by its fan-in or fan-out, so 90 % global pruning can empty whole
    # layers of it (MobileNet's pointwise convolutions, the classifier) and leave constant logits; the
    # unpruned export runs the same graph on logits that vary, so its check is the one with teeth
    assert entry["onnx_max_rel_diff"] <= 1e-4 and record["models"]["unpruned"]["onnx_max_rel_diff"] <= 1e-4
    assert entry["files"]["csr"]["bit_exact"]
    assert entry["csr_over_dense"] <= 0.2


def test_an_unexportable_size_is_one_line(tmp_path: Path) -> None:
    from cnnprune.export import onnx_bytes

    with pytest.raises(CnnpruneError, match="ONNX export at 32×32 failed .*--no-onnx"):
        onnx_bytes(ModelSpec("vgg11_bn", 2, 32).build(), 32)


def test_cifar_resnet18_takes_other_class_counts(tmp_path: Path) -> None:
    spec = ModelSpec(DEFAULT_ARCH, 100, 32)
    torch.manual_seed(0)
    checkpoint = tmp_path / "cifar100.pth"
    torch.save(spec.build().state_dict(), checkpoint)
    run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(tmp_path), only=("one_shot_50",)), progress=False)
    assert spec_of_folder(tmp_path) == spec
    record = run_export(ExportConfig(src=str(tmp_path)), progress=False)
    assert record["models"]["one_shot_50"]["onnx_max_rel_diff"] <= 1e-4


def test_random_weights_are_seeded_and_kept(tmp_path: Path) -> None:
    config = PruneConfig(arch="mobilenet_v2", weights="random", seed=5, num_classes=3, out=str(tmp_path),
                         only=("one_shot_75",))
    manifest = run_pruning(config, progress=False)
    assert manifest["model"] == {"arch": "mobilenet_v2", "num_classes": 3, "input_size": 224}
    assert "seed 5" in manifest["weights"]
    first = (tmp_path / "unpruned.pth").read_bytes()
    again = run_pruning(config, progress=False)
    assert (tmp_path / "unpruned.pth").read_bytes() == first
    assert again["checkpoints"]["one_shot_75"]["sha256"] == manifest["checkpoints"]["one_shot_75"]["sha256"]


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "resnet50"}, "has no embedded checkpoint"),
    ({"arch": "vgg99"}, "is not one of"),
    ({"weights": "random", "checkpoint": __file__}, "exclude each other"),
    ({"num_classes": 5}, "--weights random only"),
    ({"arch": "resnet50", "weights": "random", "recalibrate_bn": 10}, "resnet18-cifar only"),
    ({"input_size": 8}, "outside 32–1024"),
])
def test_prune_config_errors_are_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(CnnpruneError, match=message):
        PruneConfig(**kwargs)


def test_a_checkpoint_of_another_arch_is_named(tmp_path: Path) -> None:
    checkpoint = tmp_path / "r18.pth"
    torch.save(get_model("resnet18", weights=None).state_dict(), checkpoint)
    with pytest.raises(CnnpruneError, match="does not match torchvision's resnet34"):
        run_pruning(PruneConfig(checkpoint=str(checkpoint), arch="resnet34", out=str(tmp_path / "o")), progress=False)
    with pytest.raises(CnnpruneError, match="not a mobilenet_v2 state_dict"):
        classes_in("mobilenet_v2", load_state_dict(checkpoint), "r18.pth")


def test_each_registry_entry_names_its_last_linear() -> None:
    for name, arch in ARCHS.items():
        model = ModelSpec(name, 4, 32).build()
        assert _prunable_keys(model)[-1] == arch.classifier, name
        assert classes_in(name, model.state_dict(), name) == 4


def test_an_old_manifest_means_the_report_model(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"source": "x", "checkpoints": {}}))
    assert spec_of_folder(tmp_path) == ModelSpec()


def test_pipeline_defaults_follow_the_arch() -> None:
    from cnnprune.config import PipelineConfig

    default = PipelineConfig()
    assert (default.input_size, default.batches, default.recalibrate_bn, default.memory_runs) == (32, (1, 32), 2000, 20)
    assert default.reproduce() == "bash run_bench.sh" and default.measures_accuracy
    r50 = PipelineConfig(arch="resnet50", weights="random")
    assert (r50.input_size, r50.batches, r50.recalibrate_bn, r50.memory_runs) == (224, (1, 16), 0, 5)
    assert r50.reproduce() == "bash run_bench.sh --arch resnet50 --weights random"
    assert not r50.measures_accuracy
    small = PipelineConfig(arch="mobilenet_v2", weights="random", input_size=32)
    assert small.batches == (1, 32) and "--input-size 32" in small.reproduce()
    folder = PipelineConfig(arch="resnet50", checkpoint=__file__, dataset="imagefolder", data_dir="/x")
    assert folder.measures_accuracy


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "resnet50"}, "has no embedded checkpoint"),
    ({"arch": "resnet50", "weights": "random", "recalibrate_bn": 100}, "resnet18-cifar only"),
    ({"dataset": "imagefolder"}, "needs --data-dir"),
])
def test_pipeline_arch_errors(kwargs: dict, message: str) -> None:
    from cnnprune.config import PipelineConfig

    with pytest.raises(CnnpruneError, match=message):
        PipelineConfig(**kwargs)


def test_the_sparse_engines_say_what_they_cannot_run() -> None:
    from cnnprune.sparse import unsupported

    assert unsupported(ModelSpec()) is None
    assert unsupported(ModelSpec(DEFAULT_ARCH, 100, 32)) is None
    assert unsupported(ModelSpec("resnet50", 1000, 224)) is None, "the native engine plans any traced graph"
    assert "not resnet50 at 224×224" in unsupported(ModelSpec("resnet50", 1000, 224), "torch-csr")
    assert unsupported(ModelSpec(DEFAULT_ARCH, 10, 64), "torch-gemm") is not None
