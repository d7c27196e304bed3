"""cnnprune.runtime: the same logits as the torch-hosted engine and the dense model, in a
process that never imports torch or onnxruntime; the plan cache; one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnprune import csrfile, runtime, sparse
from cnnprune.errors import CnnpruneError
from cnnprune.kernels import library
from cnnprune.model import load_model

REPO = Path(__file__).resolve().parents[1]


def _child_env(cache: Path) -> dict[str, str]:
    """A bare environment for a fresh process, its cache folder holding the kernels already built."""
    import shutil

    shutil.copy(library()._name, cache / Path(library()._name).name)
    return {"PYTHONPATH": str(REPO), "CNNPRUNE_CACHE": str(cache), "PATH": "/usr/bin:/bin"}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


@pytest.fixture
def plan_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    library()  # built (or found) in the usual cache before the plans move to a fresh folder
    monkeypatch.setenv("CNNPRUNE_CACHE", str(tmp_path))
    return tmp_path / "plans"


@pytest.mark.parametrize("name", ["one_shot_90", "iterative_50", "unpruned"])
def test_logits_match_dense_and_the_torch_hosted_engine(artifacts: Path, plan_cache: Path, name: str) -> None:
    ref = load_model(artifacts / f"{name}.pth")
    model = runtime.load(artifacts / f"{name}.csr.safetensors", threads=2)
    hosted = sparse.load(artifacts / f"{name}.csr.pt", threads=2, calibrate=False, dense_fallback=False)
    plain = runtime.load(artifacts / f"{name}.csr.safetensors", threads=2, calibrate=False)
    for n in (1, 5, 32):
        x = _images(n, seed=n)
        with torch.no_grad():
            want = ref(torch.from_numpy(x)).numpy()
        got = model(x)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        assert np.array_equal(got.argmax(1), want.argmax(1))
        assert np.abs(plain(x) - hosted(torch.from_numpy(x)).numpy()).max() <= 1e-5 * np.abs(want).max(), \
            "the same kernels on the same operands as sparse.load"
        assert np.array_equal(model(x), got), "repeat calls with reused buffers are identical"


def test_calibration_is_cached_per_batch_and_reused(artifacts: Path, plan_cache: Path) -> None:
    path = artifacts / "one_shot_75.csr.safetensors"
    first = runtime.load(path, threads=2)
    assert not first.plan_cached(4)
    first(_images(4))
    assert first.plan_cached(4) and not first.plan_cached(2)
    modes = {k: v["engine"] for k, v in first.layer_choice(4).items()}
    second = runtime.load(path, threads=2)
    assert second.plan_cached(4)
    second(_images(4))
    assert {k: v["engine"] for k, v in second.layer_choice(4).items()} == modes
    assert not runtime.load(path, threads=1).plan_cached(4), "another thread count is another plan"
    for f in plan_cache.iterdir():
        f.write_text("{not json")
    broken = runtime.load(path, threads=2)
    assert not broken.plan_cached(4), "an unreadable plan is ignored"
    assert np.array_equal(broken(_images(4)).argmax(1), first(_images(4)).argmax(1))


def test_a_fresh_process_runs_without_torch_or_onnxruntime(artifacts: Path, tmp_path: Path) -> None:
    script = ("import sys, json, numpy as np\n"
              "from cnnprune import runtime\n"
              f"m = runtime.load({str(artifacts / 'one_shot_90.csr.safetensors')!r}, threads=2)\n"
              "x = np.random.default_rng(0).standard_normal((32, 3, 32, 32), dtype=np.float32)\n"
              "for _ in range(20):\n    y = m(x)\n"
              "print(json.dumps({'shape': list(y.shape), 'argmax': y.argmax(1).tolist(),\n"
              "                  'modules': sorted(k for k in ('torch', 'onnxruntime', 'torchvision') if k in sys.modules)}))\n")
    env = _child_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["modules"] == [], "the runtime imports neither torch nor onnxruntime"
    with torch.no_grad():
        want = load_model(artifacts / "one_shot_90.pth")(torch.from_numpy(_images(32))).argmax(1)
    assert out["shape"] == [32, 10] and out["argmax"] == want.tolist()


def test_the_cli_reports_latency_and_peak_memory(artifacts: Path, tmp_path: Path) -> None:
    env = _child_env(tmp_path)
    cmd = [sys.executable, "-m", "cnnprune.runtime", str(artifacts / "one_shot_90.csr.safetensors"), "--batch", "4",
           "--threads", "2", "--runs", "5", "--warmup", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "latency median" in proc.stdout and "IQR" in proc.stdout and "peak memory" in proc.stdout
    assert "torch or onnxruntime loaded: neither" in proc.stdout
    bad = subprocess.run(cmd[:3] + [str(artifacts / "one_shot_90.csr.pt")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and ".csr.safetensors" in bad.stderr


def test_bad_inputs_get_one_line(artifacts: Path, tmp_path: Path, plan_cache: Path) -> None:
    path = artifacts / "one_shot_90.csr.safetensors"
    with pytest.raises(CnnpruneError, match="reads NAME.csr.safetensors"):
        runtime.load(artifacts / "one_shot_90.pth")
    with pytest.raises(CnnpruneError, match="does not exist"):
        runtime.load(tmp_path / "missing.csr.safetensors")
    with pytest.raises(CnnpruneError, match="threads"):
        runtime.load(path, threads=0)
    model = runtime.load(path, threads=2, calibrate=False)
    with pytest.raises(CnnpruneError, match=r"\(N, 3, 32, 32\)"):
        model(np.zeros((1, 3, 28, 28), np.float32))
    with pytest.raises(CnnpruneError, match="numpy array"):
        model(torch.zeros(1, 3, 32, 32))
    f = csrfile.read(path)
    other = tmp_path / "r50.csr.safetensors"
    csrfile.save_state(f.state(), other, {"arch": "resnet50", "num_classes": 10, "input_size": 224})
    with pytest.raises(CnnpruneError, match="holds resnet50 at 224 px"):
        runtime.load(other)
