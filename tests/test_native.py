"""The PyTorch host of the native engine (cnnprune.native): the whole-network dense fallbacks are
made from one build of the dense model and one ONNX export per decision, hold neither after it,
and each computes the model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnprune import export
from cnnprune.graph import trace
from cnnprune.graph_engine import GraphEngine
from cnnprune.native import DenseSource, NativeSparseResNet, dense_engines, fallback_names


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


def counted_source(monkeypatch, model: nn.Module) -> tuple[DenseSource, dict[str, int]]:
    counts = {"model": 0, "onnx": 0}
    real = export.onnx_bytes

    def model_of() -> nn.Module:
        counts["model"] += 1
        return model

    def onnx_bytes(m: nn.Module, size: int = 32) -> bytes:
        counts["onnx"] += 1
        return real(m, size)

    monkeypatch.setattr(export, "onnx_bytes", onnx_bytes)
    return DenseSource(model_of, 16), counts


def test_fallbacks_made_together_share_one_model_and_one_export(monkeypatch) -> None:
    model = tiny()
    source, counts = counted_source(monkeypatch, model)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    with source.shared():
        engines = {name: make() for name, make in dense_engines(source, 2).items()}
    assert set(engines) == set(fallback_names())
    assert counts == {"model": 1, "onnx": 1}
    assert source._held is None, "nothing held after the decision"
    for name, run in engines.items():
        np.testing.assert_allclose(run(x), want, rtol=1e-4, atol=1e-5, err_msg=name)
    dense_engines(source, 2)["onnxruntime"]()  # made alone, outside a decision: its own model and export
    assert counts == {"model": 2, "onnx": 2} and source._held is None


def test_a_failed_decision_holds_nothing(monkeypatch) -> None:
    source, _ = counted_source(monkeypatch, tiny())
    with pytest.raises(RuntimeError), source.shared():
        source.model()
        raise RuntimeError("an engine failed to build")
    assert source._held is None


def test_the_engine_makes_every_fallback_inside_one_shared_block() -> None:
    model = tiny()
    inside: list[bool] = []
    state = {"open": False}

    class Block:
        def __enter__(self) -> None:
            state["open"] = True

        def __exit__(self, *exc) -> None:
            state["open"] = False

    def maker():
        inside.append(state["open"])
        return lambda x: model(torch.from_numpy(x)).detach().numpy()

    engine = GraphEngine(trace(model, (3, 16, 16)), 2, fallbacks={"a": maker, "b": maker}, sharing=Block)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        engine.run(x)
    assert inside == [True, True] and not state["open"]


def test_the_host_passes_its_source_to_the_engine() -> None:
    model = tiny()
    host = NativeSparseResNet(trace(model, (3, 16, 16)), threads=2, dense_fallback=model)
    assert host.engine.sharing.__self__.model() is model
