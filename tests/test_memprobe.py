"""The memory step's processes: each form served by the least it needs, and what each holds."""

from __future__ import annotations

from pathlib import Path

from cnnprune.measure import measure_memory


def test_each_form_runs_in_its_smallest_process(artifacts: Path) -> None:
    records = {form: measure_memory(form, artifacts, "one_shot_90", batch=2, runs=2, threads=2)
               for form in ("dense", "onnx", "sparse")}
    assert records["dense"]["imported"] == ["torch"], "PyTorch alone"
    assert records["onnx"]["imported"] == ["onnxruntime"], "onnxruntime alone"
    assert records["sparse"]["imported"] == [], "the runtime imports neither"
    for r in records.values():
        assert 0 < r["rss_before_load"] <= r["rss_after_load"] <= r["peak_rss"]
    dense, onnx, sparse = (records[f]["weights_in_memory"] for f in ("dense", "onnx", "sparse"))
    assert abs(onnx - dense) < 0.02 * dense, "the same dense weights in either dense process"
    # CSR weights and one plan's operands: below half the dense bytes where calibration keeps the
    # sparse kernel, as it does on a quiet machine; Winograd layers hold 4x their dense bytes
    assert 0 < sparse < dense, "the sparse form holds its CSR weights and one plan's operands"


def test_any_network_with_a_runtime_plan_is_served_without_torch(tmp_path: Path) -> None:
    import json

    import torch
    import torchvision

    from cnnprune import graphfile
    from cnnprune.graph import trace

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    (tmp_path / "manifest.json").write_text(json.dumps({"model": {"arch": "resnet18", "num_classes": 10,
                                                                  "input_size": 32}}))
    graphfile.write(tmp_path / f"m{graphfile.SUFFIX}", trace(model, (3, 32, 32)), {"arch": "resnet18"})
    record = measure_memory("sparse", tmp_path, "m", batch=2, runs=2, threads=2)
    assert record["process"] == "cnnprune.runtime" and record["imported"] == []
    assert 0 < record["weights_in_memory"] and record["rss_after_load"] <= record["peak_rss"]
