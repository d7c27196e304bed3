"""End to end on tiny settings: the job behind run_bench.sh, and its resume."""

from __future__ import annotations

import json
from pathlib import Path

from cnnprune.pipeline import PipelineConfig, cpu_engines, run


def test_pipeline_end_to_end_and_resume(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig(checkpoint=str(checkpoint), artifacts=str(tmp_path / "art"),
                            reports=str(tmp_path / "rep"), threads=1, batches=(2,), rounds=1, eval_limit=40,
                            memory_runs=1, models=("unpruned", "one_shot_90"))
    report = run(config)
    text = report.read_text()
    assert "## The report's claims" in text and "one_shot_90" in text
    results = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert results["test_images"] == 40
    engines = {r["engine"] for r in results["latency"]}
    assert engines == set(cpu_engines())  # OpenVINO among them where installed
    assert 0.45 < results["semi_2_4"]["sparsity"] < 0.5 and results["cuda"] is None
    recal = results["recalibrated_bn"]
    assert recal["images"] == 2000 and set(recal["models"]) == {"one_shot_90"}
    assert "p_value" in recal["models"]["one_shot_90"]["vs_unpruned"]
    assert "BN-recalibrated" in text
    acc = results["models"]["one_shot_90"]["accuracy"]
    assert acc["sparse"]["max_abs_logit_diff_vs_dense"] <= 1e-4 and acc["onnx"]["top1_agreement_with_dense"] == 1.0
    bench = tmp_path / "rep" / "_work" / "bench.json"
    stamp = bench.stat().st_mtime_ns
    run(config)
    assert bench.stat().st_mtime_ns == stamp, "a valid step is not redone"


def test_cuda_bench_import(tmp_path: Path) -> None:
    import pytest

    from cnnprune.errors import CnnpruneError
    from cnnprune.pipeline import load_cuda_bench

    reports = tmp_path / "rep"
    assert load_cuda_bench(PipelineConfig(reports=str(reports))) is None, "auto without a file: no CUDA section"
    with pytest.raises(CnnpruneError, match="does not exist"):
        load_cuda_bench(PipelineConfig(cuda_bench=str(tmp_path / "missing.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CnnpruneError, match="not the JSON of a `pytest bench` run"):
        load_cuda_bench(PipelineConfig(cuda_bench=str(bad)))
    cpu_only = tmp_path / "cpu.json"
    cpu_only.write_text(json.dumps({"benchmarks": [{"extra_info": {"device": "cpu"}}]}))
    with pytest.raises(CnnpruneError, match="no CUDA case"):
        load_cuda_bench(PipelineConfig(cuda_bench=str(cpu_only)))
    (reports / "cuda").mkdir(parents=True)
    (reports / "cuda" / "cuda_bench.json").write_text(json.dumps(
        {"benchmarks": [{"extra_info": {"device": "cuda"}}, {"extra_info": {"device": "cpu"}}]}))
    data = load_cuda_bench(PipelineConfig(reports=str(reports)))
    assert len(data["benchmarks"]) == 1 and data["path"].endswith("cuda_bench.json")
    assert load_cuda_bench(PipelineConfig(reports=str(reports), cuda_bench="none")) is None


def test_benchmark_progress_names_each_case(tmp_path: Path) -> None:
    from cnnprune.pipeline import _follow

    progress = tmp_path / "progress"
    progress.write_text("1/3 test_latency[unpruned-torch-b1-cpu-p0]\n2/3 test_latency[unpruned-sparse-b1-cpu-p0]\n")

    class Done:
        def poll(self) -> int:
            return 0

    seen = []
    _follow(Done(), progress, lambda name, total=None: seen.append((name, total)))
    assert seen == [("test_latency[unpruned-torch-b1-cpu-p0]", 3), ("test_latency[unpruned-sparse-b1-cpu-p0]", 3)]


def test_the_benchmark_runs_from_the_package(tmp_path: Path) -> None:
    from cnnprune.bench import FOLDER
    from cnnprune.pipeline import bench_command

    cmd = bench_command(PipelineConfig(artifacts="A"), tmp_path / "b.json", tmp_path / "p")
    assert cmd[3] == str(FOLDER) and (FOLDER / "pytest.ini").is_file() and (FOLDER / "conftest.py").is_file()
    assert f"--bench-artifacts={Path('A').resolve()}" in cmd


def test_the_engine_fingerprint_covers_every_module_of_the_native_engine() -> None:
    """A change to any of them must invalidate the cached timings (``ENGINE_CODE``)."""
    from cnnprune.pipeline import ENGINE_CODE

    engine = ("graph", "graph_engine", "plan", "channels", "activations", "engine", "native", "native_plan",
              "kernels", "fold", "buffers", "plancache", "sparse")
    assert {f"{name}.py" for name in engine} <= set(ENGINE_CODE)
