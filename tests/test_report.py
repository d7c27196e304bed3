"""Writing the report's files, and re-rendering from a results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import cuda_bench, synthetic

from cnnprune.errors import CnnpruneError
from cnnprune.report import main, read_results, write_report
from cnnprune.results import cuda_summary

ROOT = Path(__file__).resolve().parent.parent


def test_write_report_files(tmp_path: Path) -> None:
    r = synthetic()
    r["cuda"] = cuda_summary(cuda_bench())
    text = write_report(r, tmp_path).read_text()
    assert "## The report's claims" in text and "median (IQR)" in text and "2 threads" in text
    assert json.loads((tmp_path / "results.json").read_text())["dataset"] == "fashion-mnist"
    for png in ("latency_cpu_b1.png", "latency_cpu_b32.png", "latency_cuda.png", "accuracy.png", "sizes.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in text


def test_the_committed_report_regenerates_from_its_results(tmp_path: Path) -> None:
    """python -m cnnprune.report on the committed results.json writes the committed REPORT.md."""
    committed = ROOT / "reports" / "results.json"
    if not committed.is_file():
        pytest.skip("no committed report")
    assert main(["--results", str(committed), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").read_text() == (ROOT / "reports" / "REPORT.md").read_text()


def test_bad_results_files(tmp_path: Path) -> None:
    with pytest.raises(CnnpruneError, match="does not exist"):
        read_results(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CnnpruneError, match="not valid JSON"):
        read_results(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(CnnpruneError, match="not the results.json of a cnnprune run"):
        read_results(tmp_path / "other.json")
