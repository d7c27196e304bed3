"""The claim rules, each on small hand-made results: verdicts follow the numbers, and a figure
exactly on its threshold clears it."""

from __future__ import annotations

import dataclasses

from synthetic import MODELS, synthetic

from cnnprune.analysis import analyse
from cnnprune.claims import RULES, THRESHOLDS, claims


def verdicts(results: dict) -> dict[str, str]:
    return {c.claim.split('"')[1] if '"' in c.claim else c.claim: c.verdict for c in claims(analyse(results))}


def claim(results: dict, start: str):
    return next(c for c in claims(analyse(results)) if start in c.claim)


def test_the_table_names_every_threshold_once() -> None:
    values = set(dataclasses.asdict(THRESHOLDS).values())
    assert all(rule.threshold in values for rule in RULES)
    texts = [c.rule for c in claims(analyse(synthetic()))]
    assert "at least 1.2× faster" in texts[0] and "at most 90% of the unpruned model's smallest dense process" in texts[1]
    assert "at most 50% of the unpruned dense .pth" in texts[2] and "at most 1.0 pp below" in texts[3]
    assert texts[4].endswith("p < 0.05") and texts[5].endswith("p < 0.05")
    assert "load + 5 inferences at batch 32" in texts[1], "the rule text names the run's own settings"


def test_synthetic_verdicts() -> None:
    v = verdicts(synthetic())
    assert v["speeds up the model significantly"].startswith("holds only for the cnnprune sparse engine")
    assert "one_shot_90 (batch 32)" in v["speeds up the model significantly"]
    assert v["a much lighter model"].startswith("holds only for the compact sparse file")
    assert v["less resource usage"].startswith("does not hold")
    assert v["pruning improves generalisation"].startswith("does not hold")


def _dense_ratio(results: dict, ratio_unpruned_over_pruned: float) -> dict:
    for row in results["latency"]:
        if row["engine"] == "torch" and row["model"] == "unpruned" and row["batch"] == 32:
            row["median_ms"] = 12.0
        elif row["engine"] == "torch" and row["batch"] == 32:
            row["median_ms"] = 12.0 / ratio_unpruned_over_pruned
    return results


def test_speed_rule_on_its_threshold() -> None:
    assert verdicts(_dense_ratio(synthetic(), 1.2))["speeds up the model significantly"] == "holds"
    assert verdicts(_dense_ratio(synthetic(), 1.19))["speeds up the model significantly"] != "holds"


def test_speed_rule_follows_the_numbers() -> None:
    r = synthetic()
    for row in r["latency"]:
        if row["engine"] == "onnxruntime" and row["model"] == "one_shot_90":
            row["median_ms"] /= 2
    assert verdicts(r)["speeds up the model significantly"] == "holds"


def test_speedups_within_the_runs_noise_do_not_count() -> None:
    r = synthetic()
    for row in r["latency"]:
        if row["model"] == "iterative_50" and row["engine"] == "onnxruntime" and row["batch"] == 32:
            row["median_ms"] *= 1.5          # a slow spell: same work as one_shot_50, 1.5× the time
        if row["model"] == "one_shot_75" and row["engine"] == "onnxruntime" and row["batch"] == 32:
            row["median_ms"] /= 1.3          # a dense "speedup" from noise alone
    verdict = verdicts(r)["speeds up the model significantly"]
    assert verdict.startswith("holds only for the cnnprune sparse engine")
    # synthetic sparse at 90 %: 1/0.37 = 2.7× (counts); at 75 %: 1/0.475 = 2.1× at batch 32 (> 1.5, counts)
    assert "one_shot_90 (batch 32)" in verdict and "one_shot_75 (batch 32)" in verdict


def test_a_dense_speedup_must_hold_in_every_pass() -> None:
    r = synthetic()
    for row in r["latency"]:
        row["passes"] = 3
        row["pass_medians_ms"] = [row["median_ms"]] * 3
        if row["engine"] == "torch" and row["batch"] == 32 and row["model"] == "unpruned":
            # the machine slowed down while the unpruned model ran
            row["pass_medians_ms"] = [row["median_ms"], row["median_ms"] * 1.45, row["median_ms"] * 1.45]
            row["median_ms"] *= 1.45
    c = claim(r, "speeds up")
    assert c.verdict != "holds", "1.45× in two passes of three is not a dense speedup"
    assert any("lowest pass 1.00×" in line and "not above" in line for line in c.measured)


def test_a_sparse_speedup_must_also_beat_the_engine_on_the_unpruned_model() -> None:
    r = synthetic()
    for row in r["latency"]:  # the engine runs the unpruned model as fast as the pruned ones (a dense trick)
        if row["engine"] == "sparse" and row["model"] == "unpruned":
            row["median_ms"] = {1: 2.5, 32: 41.0}[row["batch"]] * 0.37
    assert verdicts(r)["speeds up the model significantly"] == "does not hold"


def _peak(results: dict, model: str, form: str, value: float) -> None:
    results["models"][model]["memory"][form]["32"]["peak_rss"] = value


def test_resources_rule_on_its_threshold() -> None:
    r = synthetic()
    _peak(r, "one_shot_90", "dense", 800e6 * 0.9)
    assert verdicts(r)["less resource usage"] == "holds"
    r = synthetic()
    _peak(r, "one_shot_90", "sparse", 800e6 * 0.9)
    assert verdicts(r)["less resource usage"] == "holds only for the cnnprune sparse form: one_shot_90"
    r = synthetic()
    _peak(r, "one_shot_90", "sparse", 800e6 * 0.91)
    assert verdicts(r)["less resource usage"].startswith("does not hold")


def test_resources_verdict_says_which_sparse_forms_hold_fewer_weight_bytes() -> None:
    r = synthetic()
    for m in MODELS[1:]:
        r["models"][m]["memory"]["sparse"]["32"]["weights_in_memory"] = 80e6 if m.endswith("50") else 20e6
    verdict = verdicts(r)["less resource usage"]
    assert "fewer weight bytes than dense only for one_shot_75, one_shot_90, iterative_75, iterative_90" in verdict
    assert "0.45–1.79× of dense" in verdict


def test_size_rule_on_its_threshold() -> None:
    r = synthetic()
    r["models"]["one_shot_90"]["files"]["onnx"] = r["models"]["unpruned"]["files"]["dense"] * 0.5
    assert verdicts(r)["a much lighter model"] == "holds"
    r["models"]["one_shot_90"]["files"]["onnx"] = r["models"]["unpruned"]["files"]["dense"] * 0.51
    assert verdicts(r)["a much lighter model"].startswith("holds only for the compact sparse file (csr)")
    for m in MODELS:
        r["models"][m]["files"]["csr"] = r["models"]["unpruned"]["files"]["dense"]
    assert verdicts(r)["a much lighter model"] == "does not hold"


def _accuracy(results: dict, model: str, value: float) -> None:
    results["models"][model]["accuracy"]["dense"]["accuracy"] = value


def test_accuracy_rule_on_its_threshold() -> None:
    r = synthetic()
    for m in MODELS:
        _accuracy(r, m, 0.93)
    _accuracy(r, "one_shot_90", 0.92)   # exactly 1.0 pp lost (1.0000000000000009 in floats)
    assert claim(r, "the accuracy table").verdict == "holds"
    _accuracy(r, "one_shot_90", 0.9199)
    assert claim(r, "the accuracy table").verdict == "holds only for " + ", ".join(
        m for m in MODELS[1:] if m != "one_shot_90") + "; not for one_shot_90"


def test_schedules_rule_on_its_threshold() -> None:
    r = synthetic()
    r["one_shot_vs_iterative"]["90"]["p_value"] = 0.05
    assert claim(r, "iterative vs one-shot").verdict.startswith("no measurable difference")
    r["one_shot_vs_iterative"]["90"]["p_value"] = 0.0499
    assert claim(r, "iterative vs one-shot").verdict == "differs at 90 %"


def test_generalisation_rule_on_its_threshold() -> None:
    r = synthetic()
    r["models"]["one_shot_50"]["vs_unpruned"] = {"only_baseline_correct": 1, "only_other_correct": 30, "p_value": 0.05}
    assert verdicts(r)["pruning improves generalisation"].startswith("does not hold")
    r["models"]["one_shot_50"]["vs_unpruned"]["p_value"] = 1e-6
    assert verdicts(r)["pruning improves generalisation"] == "holds for one_shot_50"
    r["models"]["one_shot_50"]["vs_unpruned"] = {"only_baseline_correct": 30, "only_other_correct": 1, "p_value": 1e-6}
    assert verdicts(r)["pruning improves generalisation"].startswith("does not hold"), "significantly worse"


def test_cuda_findings_join_the_speed_claim() -> None:
    from synthetic import cuda_bench

    from cnnprune.results import cuda_summary

    r = synthetic()
    r["cuda"] = cuda_summary(cuda_bench())
    speed = claim(r, "speeds up").measured
    assert any("torch.sparse CSR (cuSPARSE) on the report's unstructured masks runs at 0.25–0.25×" in line
               for line in speed)
    assert any("2:4 semi-structured sparsity (beyond the report, fp16) runs at 1.12–1.12×" in line for line in speed)


def test_accuracy_per_pruning_method() -> None:
    r = synthetic()
    for m in MODELS:
        _accuracy(r, m, 0.93)
    _accuracy(r, "one_shot_90", 0.25)   # plain 90 % collapses, as the default model's did
    r["recalibrated_bn"] = {"images": 2000, "source": "x", "models": {
        m: {"accuracy": 0.925 if m.endswith("90") else 0.93, "sparsity": 0.9,
            "vs_unpruned": {"only_baseline_correct": 60, "only_other_correct": 10, "p_value": 1e-9}}
        for m in MODELS[1:]}}
    c = claim(r, "the accuracy table")
    assert c.verdict.endswith("not for one_shot_90"), "the verdict is the report's method's"
    line = next(x for x in c.measured if x.startswith("BN-recalibrated"))
    assert "2,000 training images" in line and line.endswith("kept for " + ", ".join(MODELS[1:]))
    r["recalibrated_bn"]["models"]["iterative_90"]["accuracy"] = 0.9199
    line = next(x for x in claim(r, "the accuracy table").measured if x.startswith("BN-recalibrated"))
    assert line.endswith("; not for iterative_90")
