from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnprune.model import load_state_dict
from cnnprune.prune import PruneConfig, run_pruning
from cnnprune.schedules import CHECKPOINT_NAMES, REPORT_SCHEDULES, expected_zeros, schedule_by_name


def _prunable(state: dict) -> list[str]:
    return [k for k, v in state.items() if k.endswith(".weight") and v.ndim in (2, 4)]


def test_schedules_are_the_reports() -> None:
    assert CHECKPOINT_NAMES == ("one_shot_50", "one_shot_75", "one_shot_90",
                                "iterative_50", "iterative_75", "iterative_90")
    assert [round(s.final_fraction, 3) for s in REPORT_SCHEDULES] == [0.5, 0.75, 0.9, 0.502, 0.751, 0.9]
    assert schedule_by_name("iterative_90").amount == 0.369 and schedule_by_name("iterative_90").steps == 5


@pytest.mark.parametrize("name", CHECKPOINT_NAMES)
def test_exact_sparsity_order_and_untouched_tensors(artifacts: Path, random_state, name: str) -> None:
    pruned = load_state_dict(artifacts / f"{name}.pth")
    keys = _prunable(random_state)
    total = sum(random_state[k].numel() for k in keys)
    zeros = sum(int((pruned[k] == 0).sum()) for k in keys)
    assert zeros == expected_zeros(schedule_by_name(name), total)
    kept = torch.cat([random_state[k][pruned[k] != 0].abs() for k in keys])
    removed = torch.cat([random_state[k][pruned[k] == 0].abs() for k in keys])
    assert kept.min() >= removed.max()
    for k, v in random_state.items():
        if k in keys:
            mask = pruned[k] != 0
            assert torch.equal(pruned[k][mask], v[mask])
            assert not torch.signbit(pruned[k][~mask]).any(), "pruned zeros are canonical +0.0"
        else:
            assert torch.equal(pruned[k], v), k


def test_checkpoints_are_permanent_plain_state_dicts(artifacts: Path, random_state) -> None:
    for name in CHECKPOINT_NAMES:
        state = torch.load(artifacts / f"{name}.pth", weights_only=True)
        assert set(state) == set(random_state)


def test_manifest(artifacts: Path, checkpoint: Path) -> None:
    from cnnprune.fileio import sha256_file

    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["source"] == str(checkpoint) and manifest["source_sha256"] == sha256_file(checkpoint)
    for name in CHECKPOINT_NAMES:
        e = manifest["checkpoints"][name]
        assert e["sha256"] == sha256_file(artifacts / f"{name}.pth")
        assert e["sparsity_mask"] == e["sparsity_tensor"]
        assert abs(e["sparsity_tensor"] - schedule_by_name(name).final_fraction) < 1e-3
        assert sum(l["zeros"] for l in e["per_layer"].values()) == e["prunable_weights"] - e["nonzero_prunable_weights"]


def test_custom_targets_reach_exact_counts(tmp_path: Path, checkpoint: Path, random_state) -> None:
    from cnnprune.schedules import custom_schedules

    schedules = custom_schedules([0.3], 3)
    assert abs(schedules[1].final_fraction - 0.3) < 1e-12
    manifest = run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(tmp_path)), schedules, progress=False)
    total = sum(random_state[k].numel() for k in _prunable(random_state))
    for s in schedules:
        e = manifest["checkpoints"][s.name]
        assert e["prunable_weights"] - e["nonzero_prunable_weights"] == expected_zeros(s, total)
    with pytest.raises(ValueError):
        custom_schedules([1.0], 5)


def test_rerun_keeps_valid_files_and_redoes_invalid(tmp_path: Path, checkpoint: Path) -> None:
    schedules = [schedule_by_name("one_shot_50")]
    run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(tmp_path)), schedules, progress=False)
    path = tmp_path / "one_shot_50.pth"
    before = path.stat().st_mtime_ns
    run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(tmp_path)), schedules, progress=False)
    assert path.stat().st_mtime_ns == before
    path.write_bytes(b"garbage")
    run_pruning(PruneConfig(checkpoint=str(checkpoint), out=str(tmp_path)), schedules, progress=False)
    assert load_state_dict(path)["fc.weight"].shape == (10, 512)


def test_prune_2_4_keeps_the_two_largest_of_every_group_of_four(random_state) -> None:
    from cnnprune.prune import is_2_4, prune_2_4

    pruned = prune_2_4(random_state)
    for k, v in random_state.items():
        if k in _prunable(random_state) and v[0].numel() % 4 == 0:
            rows, before = pruned[k].reshape(v.shape[0], -1), v.reshape(v.shape[0], -1)
            assert is_2_4(rows) and not is_2_4(before)
            groups, orig = rows.reshape(rows.shape[0], -1, 4), before.reshape(rows.shape[0], -1, 4)
            assert torch.equal((groups != 0).sum(-1), torch.full(groups.shape[:2], 2))
            kept = torch.where(groups != 0, orig.abs(), torch.inf).amin(-1)
            removed = torch.where(groups == 0, orig.abs(), -torch.inf).amax(-1)
            assert (kept >= removed).all()
            assert torch.equal(groups[groups != 0], orig[groups != 0])
            assert not torch.signbit(pruned[k][pruned[k] == 0]).any()
        else:
            assert torch.equal(pruned[k], v), f"{k} (stem: 27 inputs per row, BatchNorm) stays as it was"
    assert random_state["conv1.weight"].ne(0).all()


def test_is_2_4_rejects_wrong_shapes_and_dense_groups() -> None:
    from cnnprune.prune import is_2_4

    assert is_2_4(torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0]]))
    assert not is_2_4(torch.tensor([[1.0, 1.0, 2.0, 0.0]]))
    assert not is_2_4(torch.zeros(2, 6))
    assert not is_2_4(torch.zeros(4))


def test_write_2_4_writes_a_loadable_checkpoint(tmp_path: Path, checkpoint: Path) -> None:
    from cnnprune.prune import is_2_4, write_2_4

    out = write_2_4(checkpoint, tmp_path / "semi_2_4.pth")
    state = load_state_dict(out)
    assert is_2_4(state["layer1.0.conv1.weight"].reshape(64, -1))
    assert not list(tmp_path.glob("*.tmp*"))


def test_data_parallel_finetuning_with_torchrun(tmp_path: Path, checkpoint: Path, fashion_dir: Path) -> None:
    """prune --finetune-epochs under torchrun (2 processes, gloo): the fine-tuned checkpoint is
    written once, by rank 0, with the exact sparsity of the schedule."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cnnprune.prune", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
           "--only", "iterative_90", "--finetune-epochs", "1", "--finetune-limit", "32", "--data-dir", str(fashion_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    entry = manifest["checkpoints"]["iterative_90"]
    state = torch.load(tmp_path / "o" / "iterative_90.pth", weights_only=True)
    names = _prunable(state)
    zeros, total = sum(int((state[k] == 0).sum()) for k in names), sum(state[k].numel() for k in names)
    assert zeros == expected_zeros(schedule_by_name("iterative_90"), total)
    assert entry["sparsity_tensor"] == pytest.approx(entry["sparsity_mask"])
    assert proc.stdout.count("pruned checkpoints in") == 1, "only rank 0 prints"
