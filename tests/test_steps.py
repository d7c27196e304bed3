"""Steps and their ledgers: reuse while inputs, code and outputs are unchanged; resume per item."""

from __future__ import annotations

import json
from pathlib import Path

from cnnprune.steps import Ledger, Progress, Step


def test_a_step_is_reused_while_nothing_changed(tmp_path: Path) -> None:
    out = tmp_path / "x.txt"
    calls = []

    def work(text: str = "a") -> dict:
        calls.append(text)
        out.write_text(text)
        return {"value": text}

    step = Step("x", (1,), ("steps.py",), (out,))
    assert Ledger(tmp_path / "l.json", "items").run("x", step, work) == {"value": "a"}
    ledger = Ledger(tmp_path / "l.json", "items")
    assert ledger.run("x", step, work) == {"value": "a"} and calls == ["a"] and ledger.all_reused
    Ledger(tmp_path / "l.json", "items").run("x", Step("x", (2,), ("steps.py",), (out,)), work)
    assert calls == ["a", "a"], "other inputs: redone"
    out.write_text("tampered")
    Ledger(tmp_path / "l.json", "items").run("x", Step("x", (2,), ("steps.py",), (out,)), work)
    assert calls == ["a", "a", "a"], "an output changed on disk: redone"
    Ledger(tmp_path / "l.json", "items", fresh=True).run("x", Step("x", (2,), ("steps.py",), (out,)), work)
    assert len(calls) == 4, "fresh: redone"


def test_items_are_recorded_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    ledger = Ledger(path, "models", header={"dataset": "d"})
    ledger.run("a", Step("a"), lambda: {"acc": 1})
    record = json.loads(path.read_text())
    assert record["dataset"] == "d" and record["models"] == {"a": {"acc": 1}} and "fingerprint" in record["steps"]["a"]
    resumed = Ledger(path, "models", header={"dataset": "d"})
    resumed.run("a", Step("a"), lambda: {"acc": 2})
    resumed.run("b", Step("b"), lambda: {"acc": 3})
    assert resumed.reused == ["a"] and resumed.ran == ["b"] and not resumed.all_reused
    assert json.loads(path.read_text())["models"] == {"a": {"acc": 1}, "b": {"acc": 3}}


def test_a_corrupt_ledger_is_redone(tmp_path: Path) -> None:
    (tmp_path / "l.json").write_text("{not json")
    assert Ledger(tmp_path / "l.json", "m").run("a", Step("a"), lambda: 5) == 5


def test_progress_names_each_item(capsys) -> None:
    with Progress(True).task("step", None) as start:
        start("first", 2)
        start("second")
    assert "step" in capsys.readouterr().err
