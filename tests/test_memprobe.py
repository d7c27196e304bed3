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
