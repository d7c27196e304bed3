"""REPORT.md from a synthetic run: sections present, every figure read from results.json."""

from __future__ import annotations

import copy

from synthetic import cuda_bench, sparse_program_in_one_pass, synthetic

from cnnprune.analysis import LatencyRow, analyse
from cnnprune.markdown import _layer_marks, markdown
from cnnprune.results import cuda_summary


def render(results: dict) -> str:
    return markdown(analyse(results), [])


def test_every_number_comes_from_results() -> None:
    r = synthetic()
    text_a = render(r)
    r2 = copy.deepcopy(r)
    r2["machine"]["threads"] = 7
    for row in r2["latency"]:
        row["median_ms"] *= 1.5
    assert render(r2) != text_a and "7 threads" in render(r2)
    assert "Machine: Test CPU, 2 logical" in text_a  # results written before cpu_detail was recorded
    r2["machine"]["cpu_detail"] = "AVX-512; L1d 48K"
    assert "Machine: Test CPU (AVX-512; L1d 48K), 2 logical" in render(r2)


def test_goals_section() -> None:
    r = synthetic()
    assert "The sparse engine against its goals" in render(r)
    for row in r["latency"]:
        row["passes"] = 3
        row["pass_medians_ms"] = [row["median_ms"]] * 3
    assert "range over passes" in render(r)


def test_layer_marks_and_pruning_alone() -> None:
    row = LatencyRow("m", "sparse", 1, "cpu", 1.0, 0.1, 3, winograd_layers=(10, 9, 10), dense_layers=(0, 1, 0))
    assert _layer_marks(row) == " W9–10 ‡0–1"
    assert _layer_marks(LatencyRow("m", "sparse", 1, "cpu", 1.0, 0.1, 3, dense_layers=(2,))) == " ‡2"
    assert _layer_marks(LatencyRow("m", "sparse", 1, "cpu", 1.0, 0.1, 3)) == ""
    r = synthetic()
    for row in r["latency"]:
        if row["engine"] == "sparse" and row["model"] == "unpruned":
            row["median_ms"] /= 2
    g = next(g for g in analyse(r).goals if (g.model, g.batch) == ("one_shot_90", 32))
    text = render(r)
    assert "sparse: unpruned / pruned" in text and "Pruning alone" in text and f"{g.pruning_alone:.2f}×" in text


def test_cuda_section_follows_the_numbers() -> None:
    r = synthetic()
    assert "## CUDA" not in render(r), "no CUDA run, no section"
    r["cuda"] = cuda_summary(cuda_bench())
    r["semi_2_4"] = {"checkpoint": "x", "accuracy": 0.91, "sparsity": 0.4998, "params_nonzero": 5_600_000,
                     "params_total": 11_173_962, "flop_limit_speedup": 1.99,
                     "vs_unpruned": {"only_baseline_correct": 30, "only_other_correct": 10, "p_value": 0.002}}
    text = render(r)
    section = text[text.index("## CUDA: a separate run on Test GPU"):text.index("## Accuracy and agreement")]
    assert "0.25× (0.25–0.25)" in section
    assert "| 256 | 0.900 (0.000) | 1.000 (0.000) | 0.800 (0.000) | 1.25× | 1.12× |" in section
    assert "top-1 91.00%" in section and "McNemar p = 0.002" in section and "commit `abc`" in section


def test_reproduce_line_names_what_differs_from_the_defaults() -> None:
    r = synthetic()
    r["config"] = {"batches": [1, 32], "threads": 2}
    assert "```\nbash run_bench.sh   # this report" in render(r)
    r["config"] = {"batches": [8], "finetune_epochs": 1, "threads": 4, "passes": 5}
    assert "bash run_bench.sh --threads 4 --passes 5 --finetune-epochs 1 --batches 8   # this report" in render(r)


def test_accuracy_by_method_table() -> None:
    r = synthetic()
    assert "Accuracy by pruning method" not in render(r), "plain only: no table"
    r["recalibrated_bn"] = {"images": 2000, "source": "x", "models": {
        "one_shot_90": {"accuracy": 0.931, "sparsity": 0.9,
                        "vs_unpruned": {"only_baseline_correct": 1, "only_other_correct": 2, "p_value": 1.0}}}}
    text = render(r)
    assert "| model | plain (the report's method) | BN-recalibrated |" in text
    assert "| one_shot_90 | 92.60% (Δ -0.40 pp, p = 1.000) | 93.10% (Δ +0.10 pp, p = 1.000) |" in text
    assert "| one_shot_50 | 93.00% (Δ +0.00 pp, p = 1.000) | – |" in text
    assert "| accuracy kept (≤ 1.0 pp lost) | 6 of 6 | 1 of 1 |" in text


def test_dead_channels_and_constant_logits_are_said_where_measured() -> None:
    r = synthetic()
    text = render(r)
    assert "Dead channels" not in text and "Logits independent" not in text and "compute a constant" not in text
    planned = {"one_shot_90": 2524, "one_shot_75": 4632}
    for row in r["latency"]:
        if row["engine"] == "sparse":
            row["conv_channels"] = [17056, planned.get(row["model"], 17056)]
    for m, entry in r["models"].items():
        entry["counts"] |= {"logit_spread": 0.0 if m == "one_shot_90" else 0.3, "logit_scale": 0.02}
    text = render(r)
    line = text.split("Dead channels: ")[1].split("\n")[0]
    assert line.startswith("the sparse engine planned, of the 17,056 convolution output channels of each model, ")
    assert "one_shot_75 4,632" in line and "one_shot_90 2,524" in line and "one_shot_50" not in line
    assert "Logits independent of the input: one_shot_90 (" in text
    assert "one_shot_90 compute a constant (their logits do not depend on the input): the sparse engine's " \
        "dead-channel pass skips part of that work" in text, "the speed claim's verdict says so"
    for row in r["latency"]:
        row.pop("conv_channels", None)
    assert "one_shot_90 compute a constant (their logits do not depend on the input): the sparse engine computes " \
        "them in full" in render(r)


def test_a_goal_whose_engine_changed_between_passes_says_what_ran_in_each() -> None:
    r = sparse_program_in_one_pass(synthetic())
    line = next(x for x in render(r).splitlines() if x.startswith("| one_shot_50 | 1 |"))
    assert "ran the dense fallback in some passes (by pass: 1.00× onnxruntime, 0.80× sparse, 1.00× onnxruntime)" in line
    assert "by pass" not in render(synthetic()), "older runs recorded no engine per pass"


def test_what_served_the_sparse_form_in_the_memory_step_is_read_from_the_record() -> None:
    r = synthetic()
    r["model"] = {"arch": "resnet50", "num_classes": 1000, "input_size": 224}
    r["config"] |= {"arch": "resnet50", "input_size": 224, "weights": "random"}
    assert analyse(r).sparse_memory_host == "sparse.load"  # no record (older runs): as the step ran then
    assert "sparse = `cnnprune.sparse.load` (torch" in render(r)
    for entry in r["models"].values():
        entry["memory"]["sparse"]["32"]["process"] = "cnnprune.runtime"
    text = render(r)
    assert analyse(r).sparse_memory_host == "runtime"
    assert "sparse = `cnnprune.runtime` alone" in text and ".graph.safetensors in `cnnprune.runtime`" in text
    assert "(cnnprune.runtime alone, " in text, "the memory claim says which process, model by model"
    r["models"]["one_shot_50"]["memory"]["sparse"]["32"]["process"] = "cnnprune.sparse (torch)"
    text = render(r)
    assert analyse(r).sparse_memory_host == "both"
    assert "where the export wrote one, else `cnnprune.sparse.load`" in text
    assert "| model | nonzero / total params | dense .pth | .onnx | .csr.pt | csr / dense | nonzero MACs | " \
           "peak RSS torch / onnxruntime / runtime or sparse.load |" in text


def test_first_calls_are_reported_per_batch_where_measured() -> None:
    r = synthetic()
    assert "First call" not in render(r), "runs before the figure was recorded say nothing of it"
    for row in r["latency"]:
        if row["device"] == "cpu":
            row["first_call_s"] = [4.25, 3.5] if row["engine"] == "sparse" and row["model"] == "one_shot_90" else [0.5]
    line = next(x for x in render(r).splitlines() if x.startswith("First call"))
    assert "cnnprune sparse 0.50–4.25 s" in line and "onnxruntime (dense) 0.50 s" in line
    assert all(f"batch {b}: " in line for b in {row["batch"] for row in r["latency"] if row["device"] == "cpu"})
