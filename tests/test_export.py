from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cnnprune.model import load_model
from cnnprune.schedules import CHECKPOINT_NAMES


def test_export_record_and_onnx_equality(artifacts: Path) -> None:
    record = json.loads((artifacts / "export.json").read_text())
    assert set(record["models"]) == {"unpruned", *CHECKPOINT_NAMES}
    x = torch.randn(3, 3, 32, 32)
    for name, entry in record["models"].items():
        assert entry["files"]["csr"]["bit_exact"]
        assert entry["onnx_max_rel_diff"] <= 1e-4
        model = load_model(artifacts / f"{name}.pth")
        sess = ort.InferenceSession(str(artifacts / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert np.abs(got - want).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).all()


def test_dense_export_loads_in_plain_torchvision(artifacts: Path) -> None:
    import torchvision

    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    tv.load_state_dict(torch.load(artifacts / "one_shot_90.pth", weights_only=True))


def test_killed_export_leaves_no_half_written_file(tmp_path: Path, artifacts: Path) -> None:
    folder = tmp_path / "a"
    folder.mkdir()
    for name in ("manifest.json", *[f"{n}.pth" for n in CHECKPOINT_NAMES]):
        (folder / name).write_bytes((artifacts / name).read_bytes())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "cnnprune.export", "--sparse", "--in", str(folder)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(folder.glob("*.onnx")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        if path.suffix == ".onnx":
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        elif path.suffix in (".pt", ".pth"):
            torch.load(path, weights_only=True)
        elif path.suffix == ".json":
            json.loads(path.read_text())
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    models = json.loads((folder / "export.json").read_text())["models"]
    assert len(models) == 7
    assert all(m["files"]["graph"]["max_rel_diff"] <= 1e-4 for m in models.values())  # the runtime's plan, checked


def test_export_without_manifest_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cnnprune.export", "--in", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "manifest.json" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_openvino_runs_the_onnx_file_like_onnxruntime(artifacts: Path) -> None:
    pytest.importorskip("openvino")
    from cnnprune.export import openvino_session, ort_session

    x = torch.randn(2, 3, 32, 32).numpy()
    want = ort_session(artifacts / "one_shot_90.onnx", 1).run(None, {"input": x})[0]
    got = openvino_session(artifacts / "one_shot_90.onnx", 1)(x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).all()


def test_the_recorded_onnx_export_of_a_file_is_found_only_while_it_is_the_checked_one(tmp_path: Path,
                                                                                      artifacts: Path) -> None:
    import dataclasses
    import shutil

    from cnnprune.export import exported_onnx
    from cnnprune.fileio import sha256_file
    from cnnprune.model import spec_of_folder

    folder = tmp_path / "a"
    shutil.copytree(artifacts, folder)
    spec = spec_of_folder(folder)

    def found(name: str):
        return exported_onnx(folder / name, sha256_file(folder / name), spec)

    for name in ("one_shot_90.csr.pt", "one_shot_90.pth", "one_shot_90.csr.safetensors"):
        assert found(name) == folder / "one_shot_90.onnx", name
    assert exported_onnx(folder / "one_shot_90.csr.pt", "0" * 64, spec) is None, "weights the record does not know"
    other = dataclasses.replace(spec, input_size=64)
    assert exported_onnx(folder / "one_shot_90.csr.pt", sha256_file(folder / "one_shot_90.csr.pt"), other) is None
    data = bytearray((folder / "one_shot_90.onnx").read_bytes())
    data[-1] ^= 1
    (folder / "one_shot_90.onnx").write_bytes(bytes(data))
    assert found("one_shot_90.csr.pt") is None, "an ONNX file changed after its export"
    assert found("one_shot_75.csr.pt") == folder / "one_shot_75.onnx"
    (folder / "export.json").write_text("{not json")
    assert found("one_shot_75.csr.pt") is None
    (folder / "export.json").unlink()
    assert found("one_shot_75.csr.pt") is None


def test_the_sparse_engines_dense_fallbacks_run_the_checked_export(monkeypatch, artifacts: Path) -> None:
    from cnnprune import export, sparse

    def no_export(*args, **kwargs):
        raise AssertionError("the fallback exported the model again")

    monkeypatch.setattr(export, "onnx_bytes", no_export)
    model = sparse.load(artifacts / "one_shot_90.csr.pt", threads=2, calibrate=False)
    source = model.engine.sharing.__self__
    assert "onnx_file" not in vars(source), "looked for only when a fallback is made"
    assert source.onnx_file == artifacts / "one_shot_90.onnx"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = load_model(artifacts / "one_shot_90.pth")(x).numpy()
    for name, make in model.engine.fallbacks.items():
        if name != "torch":
            np.testing.assert_allclose(make()(x.numpy()), want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_graph_with_ops_in_pytorch_gets_no_runtime_file_and_says_why(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cnnprune import export, graphfile
    from tests.test_graph import Odd

    path = tmp_path / f"odd{graphfile.SUFFIX}"
    path.write_bytes(b"an earlier export's")
    spec = SimpleNamespace(input_size=16, record=dict, example=lambda n: torch.randn(n, 3, 16, 16))
    entry: dict = {"files": {}}
    export.export_graph(Odd().eval(), path, spec, entry)
    assert not path.exists() and "graph" not in entry["files"]
    assert "ops run in PyTorch (first:" in entry["graph_not_written"]
