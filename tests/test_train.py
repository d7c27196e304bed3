from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnprune.errors import CnnpruneError
from cnnprune.model import load_model
from cnnprune.train import TrainConfig, package_default, train


def test_tiny_training_run_writes_resumable_state(tmp_path: Path, fashion_dir: Path) -> None:
    cfg = TrainConfig(data_dir=str(fashion_dir), epochs=2, batch_size=16, out=str(tmp_path / "run"), threads=2)
    last = train(cfg, progress=False)
    assert last["epoch"] == 2 and 0.0 <= last["test_acc"] <= 1.0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2]
    load_model(tmp_path / "run" / "model.pth")
    half = torch.load(tmp_path / "run" / "model_fp16.pth", weights_only=True)
    assert half["conv1.weight"].dtype == torch.float16
    again = train(cfg, resume=True, progress=False)
    assert again == last, "resuming a finished run changes nothing"
    target = package_default(tmp_path / "run", "python -m cnnprune.train …", tmp_path / "shipped.pth")
    card = json.loads(target.with_suffix(".json").read_text())
    assert card["bytes"] == target.stat().st_size and len(card["log"]) == 2 and 0 <= card["test_accuracy_fp16"] <= 1
    assert card["trained_on"]["world_size"] == 1 and card["trained_on"]["device"].startswith("cpu")


def test_resume_with_other_settings_is_refused(tmp_path: Path, fashion_dir: Path) -> None:
    cfg = TrainConfig(data_dir=str(fashion_dir), epochs=1, batch_size=16, out=str(tmp_path / "run"))
    train(cfg, progress=False)
    with pytest.raises(CnnpruneError, match="other settings"):
        train(TrainConfig(data_dir=str(fashion_dir), epochs=2, batch_size=16, out=str(tmp_path / "run")),
              resume=True, progress=False)


def test_cosine_schedule_warms_up_then_decays(tmp_path: Path) -> None:
    from cnnprune.train import _scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = _scheduler(opt, TrainConfig(schedule="cosine", warmup=0.3, max_lr=0.01), total=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01 / 3) and lrs[2] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.001


def test_the_recipe_can_decay_norms_too() -> None:
    from cnnprune.model import build_model
    from cnnprune.train import _param_groups

    model = build_model()
    plain = _param_groups(model, 0.01)
    both = _param_groups(model, 0.01, decay_norms=True)
    assert plain[1]["params"] and not both[1]["params"]
    assert len(both[0]["params"]) == len(list(model.parameters()))


def test_data_parallel_run_with_torchrun(tmp_path: Path, cifar_dir: Path) -> None:
    """torchrun --standalone --nproc_per_node 2 -m cnnprune.train on a tiny real-format CIFAR-10
    folder, gloo on the CPU: one rank writes, the record says world_size 2."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cnnprune.train", "--dataset", "cifar10", "--data-dir", str(cifar_dir), "--epochs", "1",
           "--batch-size", "8", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["world_size"] == 2 and run["backend"] == "gloo"
    log = json.loads((tmp_path / "o" / "log.json").read_text())
    assert len(log) == 1 and log[0]["epoch"] == 1 and 0.0 <= log[0]["test_acc"] <= 1.0
    load_model(tmp_path / "o" / "model.pth")
    assert proc.stdout.count("final test accuracy") == 1, "only rank 0 prints"
