"""measure: whether a model's logits depend on its input (logit_spread); what the CPU is (cpu_detail)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnprune.analysis import ModelResult
from cnnprune.archs import ModelSpec
from cnnprune.measure import cpu_detail, logit_spread


def test_a_network_with_a_dead_layer_gets_the_same_logits_for_every_input() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("resnet18", 10, 32)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    alive = logit_spread(model, spec)
    assert alive["logit_spread"] > 0 and alive["logit_scale"] > 0
    model[2].weight.data.zero_()
    dead = logit_spread(model, spec)
    assert dead["logit_spread"] == 0.0 and dead["logit_scale"] > 0


def test_input_independent_is_relative_to_the_logits_scale() -> None:
    def result(spread: float | None, scale: float | None) -> ModelResult:
        return ModelResult("m", 0.9, {}, 0.0, 1.0, {}, 1, 1, 1.0, 1.0, 1.0, {}, None, spread, scale)

    assert result(0.0, 0.0).input_independent and result(1e-9, 0.02).input_independent
    assert not result(1e-3, 0.02).input_independent and not result(None, None).input_independent


def test_cpu_detail_names_the_vector_width_and_data_caches(tmp_path: Path) -> None:
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K")]):
        index = tmp_path / f"index{i}"
        index.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (index / name).write_text(f"{value}\n")
    (tmp_path / "index3").mkdir()  # unreadable: skipped
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_detail(str(tmp_path), str(info)) == "AVX-512; L1d 48K, L2 2048K"
    info.write_text("flags\t\t: fpu sse avx2\n")
    assert cpu_detail(str(tmp_path / "none"), str(info)) == "AVX2"
    assert cpu_detail(str(tmp_path / "none"), str(tmp_path / "none")) == ""
