from __future__ import annotations

from pathlib import Path

import pytest

from cnnprune.fileio import atomic_write, remove_stale_temps, write_text


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_stale_temps_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".a.pth.x1.tmp").write_bytes(b"x")
    (tmp_path / "keep.pth").write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pth"]
