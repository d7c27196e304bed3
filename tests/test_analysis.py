"""Derived figures, computed once from results.json: speedups, noise, goals, the CUDA run."""

from __future__ import annotations

import pytest
from synthetic import bench_entry, cuda_bench, sparse_program_in_one_pass, synthetic

from cnnprune.analysis import LatencyRow, Ratio, analyse, paired_ratio
from cnnprune.results import cuda_summary, latency_rows


def goals(results: dict) -> dict:
    return {(g.model, g.batch): g for g in analyse(results).goals}


def test_sparse_goals_follow_the_numbers() -> None:
    r = synthetic()
    g = goals(r)
    assert len(g) == 12
    # synthetic sparse time = dense · (1 − 0.7·s): at 90 % that is 1/0.37 = 2.70×
    assert g[("one_shot_90", 32)].goal == 3.2 and not g[("one_shot_90", 32)].met
    assert g[("one_shot_90", 32)].speedup.median == pytest.approx(1 / 0.37)
    assert g[("one_shot_90", 1)].met and g[("one_shot_50", 1)].met
    for row in r["latency"]:
        if row["engine"] == "sparse" and row["model"] == "one_shot_50" and row["batch"] == 1:
            row["median_ms"] = 2.5 + 0.2   # slower than dense (2.5 ms, IQR 0.1) beyond the noise
    assert not goals(r)[("one_shot_50", 1)].met


def test_goals_with_passes_use_the_range_over_passes() -> None:
    r = synthetic()
    for row in r["latency"]:
        row["passes"] = 3
        row["pass_medians_ms"] = [row["median_ms"]] * 3
        if row["engine"] == "sparse" and row["model"] == "one_shot_50" and row["batch"] == 1:
            row["pass_medians_ms"] = [2.0, 2.6, 3.0]   # slower than onnxruntime in one pass of three
        if row["engine"] == "sparse" and row["model"] == "iterative_50" and row["batch"] == 1:
            row["pass_medians_ms"] = [2.6, 2.7, 2.8]   # slower in every pass
    g = goals(r)
    assert g[("one_shot_50", 1)].met and g[("one_shot_50", 1)].within_noise
    assert not g[("iterative_50", 1)].met and not g[("iterative_50", 1)].within_noise
    assert (g[("one_shot_90", 32)].speedup.low, g[("one_shot_90", 32)].speedup.high) == pytest.approx([1 / 0.37] * 2)


def test_noise_floor_is_the_one_shot_vs_iterative_spread() -> None:
    r = synthetic()
    assert all(1.0 <= v < 1.01 for v in analyse(r).noise.values()), "iterative ≈ one-shot sparsity: no noise"
    for row in r["latency"]:
        if row["model"] == "iterative_50" and row["engine"] == "onnxruntime" and row["batch"] == 32:
            row["median_ms"] *= 1.5
    assert analyse(r).noise[("cpu", 32)] == pytest.approx(1.5)


def test_passes_merge_and_speedups_are_per_pass_ratios() -> None:
    # the machine halves its speed between passes; within a pass sparse is always 2x faster
    bench = {"benchmarks": [bench_entry("one_shot_90", e, p, [ms * (1 + p)] * 3)
                            for p in range(3) for e, ms in (("onnxruntime", 4.0), ("sparse", 2.0))]}
    rows = {r["engine"]: r for r in latency_rows(bench)}
    assert set(rows) == {"onnxruntime", "sparse"}
    assert rows["sparse"]["rounds"] == 9 and rows["sparse"]["passes"] == 3
    assert rows["sparse"]["pass_medians_ms"] == pytest.approx([2.0, 4.0, 6.0])
    assert rows["sparse"]["median_ms"] == pytest.approx(4.0) and rows["sparse"]["min_ms"] == pytest.approx(2.0)
    ort, sparse = LatencyRow.of(rows["onnxruntime"]), LatencyRow.of(rows["sparse"])
    assert paired_ratio(ort, sparse) == Ratio(2.0, 2.0, 2.0)
    # pooled medians would give 8/4 = 2 here too, but not when passes are unbalanced:
    rows["sparse"]["pass_medians_ms"] = [2.0, 8.0, 6.0]
    assert paired_ratio(ort, LatencyRow.of(rows["sparse"])) == Ratio(2.0, 1.0, 2.0)


def test_pruning_alone_is_the_engine_against_itself() -> None:
    r = synthetic()
    for row in r["latency"]:  # the engine runs the unpruned model 2x faster than onnxruntime (Winograd)
        if row["engine"] == "sparse" and row["model"] == "unpruned":
            row["median_ms"] /= 2
    g = goals(r)[("one_shot_90", 32)]
    assert g.pruning_alone == pytest.approx((41.0 / 2) / (41.0 * (1 - 0.7 * 0.9)))
    assert g.pruning_alone < g.speedup.median, "what Winograd gains is not counted as pruning's"


def test_cuda_speedups() -> None:
    r = synthetic()
    assert analyse(r).cuda == ()
    r["cuda"] = cuda_summary(cuda_bench())
    rows = {(x.row.model, x.row.engine): x for x in analyse(r).cuda}
    assert rows[("one_shot_90", "torch-csr")].best_dense_engine == "cuda-graph"
    assert rows[("one_shot_90", "torch-csr")].vs_best_dense.median == pytest.approx(0.25)
    assert rows[("semi_2_4", "fp16-2:4")].best_dense_engine == "fp16-cudnn"
    assert rows[("semi_2_4", "fp16-2:4")].vs_best_dense.median == pytest.approx(0.9 / 0.8)
    assert rows[("semi_2_4", "fp16-2:4")].vs_dense_gemm == pytest.approx(1.25)


def test_layer_counts_per_pass() -> None:
    entries = [bench_entry("one_shot_90", "sparse", p, [2.0] * 3) for p in range(3)]
    for p, (w, d) in enumerate(((10, 0), (9, 1), (10, 0))):
        entries[p]["extra_info"].update(winograd_layers=w, dense_layers=d)
    row = LatencyRow.of(latency_rows({"benchmarks": entries})[0])
    assert row.winograd_layers == (10, 9, 10) and row.dense_layers == (0, 1, 0)
    assert LatencyRow.of({**latency_rows({"benchmarks": entries})[0], "dense_layers": 2}).dense_layers == (2,)


def test_first_call_seconds_per_pass_where_measured() -> None:
    entries = [bench_entry("one_shot_90", "sparse", p, [2.0] * 3) for p in range(3)]
    assert LatencyRow.of(latency_rows({"benchmarks": entries})[0]).first_call_s == ()
    for p, s in ((0, 4.5), (2, 3.25)):  # pass 1 from a run before the figure was recorded
        entries[p]["extra_info"]["first_call_s"] = s
    assert LatencyRow.of(latency_rows({"benchmarks": entries})[0]).first_call_s == (4.5, 3.25)


def test_what_the_sparse_engine_ran_is_kept_pass_by_pass() -> None:
    entries = [bench_entry("one_shot_50", e, p, [ms] * 3)
               for p, ran in enumerate(("onnxruntime", "sparse", "openvino"))
               for e, ms in (("onnxruntime", 4.0), ("sparse", 4.0 if ran != "sparse" else 5.0))]
    for e, ran in zip([e for e in entries if e["extra_info"]["engine"] == "sparse"], ("onnxruntime", "sparse", "openvino")):
        e["extra_info"]["sparse_engine_used"] = ran
    rows = {r["engine"]: r for r in latency_rows({"benchmarks": entries})}
    assert rows["sparse"]["sparse_engine_used"] == "onnxruntime+openvino+sparse"
    assert rows["sparse"]["sparse_engine_passes"] == ["onnxruntime", "sparse", "openvino"]
    assert LatencyRow.of(rows["sparse"]).sparse_engine_passes == ("onnxruntime", "sparse", "openvino")
    r = sparse_program_in_one_pass(synthetic())
    g = goals(r)
    assert [e for e, _ in g[("one_shot_50", 1)].by_pass] == ["onnxruntime", "sparse", "onnxruntime"]
    assert [x for _, x in g[("one_shot_50", 1)].by_pass] == pytest.approx([1.0, 0.8, 1.0])
    assert g[("one_shot_90", 1)].by_pass == (), "older runs recorded no engine per pass"
