"""The plots: the report's quoted accuracies sit at their schedules' sparsities, whatever subset ran."""

from __future__ import annotations

from pathlib import Path

from synthetic import synthetic

from cnnprune import plots
from cnnprune.analysis import analyse


def test_quoted_accuracy_points_sit_at_their_target_sparsity(tmp_path: Path, monkeypatch) -> None:
    r = synthetic()
    for m in ("one_shot_50", "one_shot_75", "iterative_50", "iterative_75"):
        del r["models"][m]
    r["latency"] = [row for row in r["latency"] if row["model"] in r["models"]]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path.name)
    plots.accuracy_plot(analyse(r), tmp_path)
    quoted = [line for line in figures[0].axes[0].lines if line.get_label().startswith("one-shot (report")]
    assert list(quoted[0].get_xdata()) == [0.0, 0.9]
