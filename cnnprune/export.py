"""Export the unpruned model and the pruned checkpoints to dense, ONNX and CSR forms.

For each ``NAME`` (``unpruned`` and every checkpoint of the manifest), in ``--out``, for the
architecture, classes and input size the manifest records:

- ``NAME.pth``: permanent dense state_dict (fp32) that plain torchvision loads;
- ``NAME.onnx``: dense ONNX graph (legacy TorchScript exporter, opset 17, dynamic batch),
  checked with ``onnx.checker`` and compared with PyTorch in onnxruntime (within 1e-4 of the
  largest logit);
- ``NAME.csr.pt`` with ``--sparse``: the lossless compact sparse form (see ``cnnprune.csr``),
  checked to decode bit for bit; beside it ``NAME.csr.safetensors``, the same layouts in
  safetensors (``cnnprune.csrfile``), which the torch-free ``cnnprune.runtime`` reads; and
  ``NAME.graph.safetensors`` (``cnnprune.graphfile``), the native engine's plan of the network
  (traced, BatchNorm folded, dead channels cut), with which the runtime serves any architecture
  whose every op runs natively: checked on the native kernels against PyTorch (within 1e-4 of the
  largest logit). Where some op would run in PyTorch it is not written, and ``export.json`` says
  which.

Sizes (bytes) and the checks' results go into ``export.json``; files still matching the
recorded checksums are not redone unless ``--fresh``.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnprune import csr, csrfile, graphfile
from cnnprune.archs import ModelSpec
from cnnprune.errors import CliParser, CnnpruneError, add_debug_flag, run_cli
from cnnprune.fileio import remove_stale_temps, save_torch, sha256_file, write_bytes
from cnnprune.hparams import add_args, from_args, opt
from cnnprune.model import checked_model, load_state_dict, spec_of_folder
from cnnprune.sessions import openvino_session, ort_session  # noqa: F401 - callers import them from here too
from cnnprune.steps import Ledger, Progress, Step

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # of the largest |logit|: relative, so it holds for any network's logit scale


@dataclass(frozen=True)
class ExportConfig:
    src: str = opt("artifacts", "folder with manifest.json", flag="--in")
    out: str | None = opt(None, "output folder (default: same as --in)")
    sparse: bool = opt(False, "also write NAME.csr.pt and NAME.csr.safetensors (compact lossless CSR; the second "
                              "without torch) and NAME.graph.safetensors (the torch-free runtime's plan)")
    onnx: bool = opt(True, "skip the ONNX export", flag="--no-onnx", negate=True)
    fresh: bool = opt(False, "redo every export")

    @property
    def target(self) -> Path:
        """The output folder: ``out``, or ``src`` when none is given."""
        return Path(self.out or self.src)


def onnx_bytes(model: torch.nn.Module, input_size: int = 32) -> bytes:
    """Serialise ``model`` (eval mode) to ONNX with a dynamic batch axis, input side ``input_size``."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model.eval(), (torch.zeros(1, 3, input_size, input_size),), buffer, dynamo=False,
                              opset_version=ONNX_OPSET, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as exc:  # the exporter's errors carry the whole graph: keep their first line
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise CnnpruneError(f"ONNX export at {input_size}×{input_size} failed ({first}); try the arch's "
                                "default --input-size, or --no-onnx") from None
    return buffer.getvalue()


def exported_onnx(model_file: Path, model_sha256: str, spec: ModelSpec) -> Path | None:
    """The ONNX export of ``model_file``'s weights that ``export.json`` beside it records, if it is
    still the file the export wrote and checked (its size and sha256 match) and was exported for
    ``spec`` with this opset; else None. ``model_file`` counts as exported when its sha256 is a
    form of that entry that holds the same weights: the dense checkpoint or a CSR file that
    decoded to it bit for bit. The sparse engine's dense fallbacks run this file instead of
    exporting the model again (1.7 s for ResNet-50 at 224 on the 2-core EPYC, per batch size
    planned), and it is the very file the benchmark runs onnxruntime on."""
    try:
        record = json.loads((model_file.parent / "export.json").read_text())
        if record.get("model") != spec.record() or record.get("onnx_opset") != ONNX_OPSET:
            return None
        for entry in record["models"].values():
            files = entry["files"]
            same = [f for key, f in files.items() if key != "onnx" and f.get("sha256") == model_sha256
                    and (key == "dense" or f.get("bit_exact") is True)]
            onnx = files.get("onnx")
            if not same or not isinstance(onnx, dict) or Path(onnx["file"]).name != onnx["file"]:
                continue
            path = model_file.parent / onnx["file"]
            if path.is_file() and path.stat().st_size == onnx["bytes"] and sha256_file(path) == onnx["sha256"]:
                return path
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no usable record: the fallback exports the model itself
    return None


def check_onnx(path: Path, model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """``onnx.checker`` + onnxruntime vs PyTorch; returns the max |logit difference| relative to the
    largest |logit| (the check a network's logit scale cannot fool)."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return logit_difference(path, "onnxruntime", session.run(None, {"input": inputs.numpy()})[0], model, inputs)


def logit_difference(path: Path, engine: str, got: np.ndarray, model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """The max |difference| of ``got`` (``engine``'s logits of ``path`` on ``inputs``) from
    PyTorch's, relative to the largest |logit|; a one-line error past ``ONNX_TOLERANCE``."""
    with torch.no_grad():
        want = model(inputs).numpy()
    diff = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    if diff > ONNX_TOLERANCE:
        raise CnnpruneError(f"{path}: {engine} differs from PyTorch by {diff:.2e} of the largest logit "
                            f"> {ONNX_TOLERANCE}")
    return diff


def source_names(src: Path) -> dict[str, Path]:
    """Checkpoints to export: the manifest's source as ``unpruned`` and every pruned one it lists."""
    manifest_path = src / "manifest.json"
    if not manifest_path.is_file():
        raise CnnpruneError(f"--in {src} has no manifest.json; run `python -m cnnprune.prune --out {src}` first")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CnnpruneError(f"{manifest_path} is not valid JSON; rerun `python -m cnnprune.prune --fresh`") from None
    checkpoints = manifest.get("checkpoints") if isinstance(manifest, dict) else None
    if not isinstance(checkpoints, dict) or not checkpoints or "source" not in manifest:
        raise CnnpruneError(f"{manifest_path} lists no checkpoints; rerun `python -m cnnprune.prune`")
    return {"unpruned": Path(manifest["source"]), **{name: src / f"{name}.pth" for name in checkpoints}}


def export_one(name: str, source: Path, config: ExportConfig, spec: ModelSpec) -> dict:
    """Export one checkpoint to the configured forms and verify each; return its export entry."""
    out = config.target
    state = load_state_dict(source)
    model = checked_model(state, str(source), spec.arch)
    entry: dict = {"source": str(source), "source_sha256": sha256_file(source), "files": {}}
    dense_path = out / f"{name}.pth"
    if dense_path.resolve() != source.resolve():
        save_torch(state, dense_path)
    entry["files"]["dense"] = {"file": dense_path.name, "bytes": dense_path.stat().st_size,
                               "sha256": sha256_file(dense_path)}
    if config.onnx:
        onnx_path = out / f"{name}.onnx"
        write_bytes(onnx_path, onnx_bytes(model, spec.input_size))
        entry["onnx_max_rel_diff"] = check_onnx(onnx_path, model, spec.example(2))
        entry["files"]["onnx"] = {"file": onnx_path.name, "bytes": onnx_path.stat().st_size,
                                  "sha256": sha256_file(onnx_path), "opset": ONNX_OPSET}
    if config.sparse:
        csr_path = out / f"{name}.csr.pt"
        csr.save(state, csr_path)
        decoded = csr.load_state(csr_path)
        exact = all(torch.equal(decoded[k].contiguous().view(-1).view(torch.uint8), v.contiguous().view(-1).view(torch.uint8))
                    for k, v in state.items() if v.is_floating_point())
        if not exact or decoded.keys() != state.keys():
            raise CnnpruneError(f"{csr_path} does not decode to {source} bit for bit; this is a cnnprune bug")
        entry["files"]["csr"] = {"file": csr_path.name, "bytes": csr_path.stat().st_size,
                                 "sha256": sha256_file(csr_path), "layouts": csr.layout_summary(csr_path),
                                 "bit_exact": True}
        entry["csr_over_dense"] = entry["files"]["csr"]["bytes"] / entry["files"]["dense"]["bytes"]
        entry["files"]["csr_safetensors"] = export_safetensors(state, out / f"{name}{csrfile.SUFFIX}", spec)
        export_graph(model, out / f"{name}{graphfile.SUFFIX}", spec, entry)
    return entry


def export_graph(model: torch.nn.Module, path: Path, spec: ModelSpec, entry: dict) -> None:
    """Write the runtime's plan of ``model`` where every op runs natively, read it back (every
    check of :func:`graphfile.read`) and compare its logits on the native kernels with PyTorch's;
    where some op would run in PyTorch, say which in ``entry`` instead."""
    from cnnprune.graph import trace
    from cnnprune.graph_engine import GraphEngine

    try:
        graph = trace(model, (3, spec.input_size, spec.input_size))
    except CnnpruneError as e:  # sparse.load serves it with the dense fallback; the runtime cannot
        return _graph_not_written(path, entry, str(e))
    torch_ops = graphfile.pytorch_ops(graph)
    if torch_ops:
        first = torch_ops[0]
        return _graph_not_written(path, entry, f"{len(torch_ops)} ops run in PyTorch (first: {first.name}: {first.why})")
    graphfile.write(path, graph, spec.record())
    inputs = spec.example(2)
    got = GraphEngine(graphfile.read(path)[0], torch.get_num_threads(), calibrate=False).run(inputs.numpy())
    diff = logit_difference(path, "the native kernels", got, model, inputs)
    entry["files"]["graph"] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                               "max_rel_diff": diff}


def _graph_not_written(path: Path, entry: dict, why: str) -> None:
    path.unlink(missing_ok=True)  # an earlier export's: it would not be this checkpoint's plan
    entry["graph_not_written"] = why


def export_safetensors(state: dict[str, torch.Tensor], path: Path, spec: ModelSpec) -> dict:
    """Write the torch-free twin of ``.csr.pt`` (:mod:`cnnprune.csrfile`) and check it decodes bit for bit."""
    arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()}
    csrfile.save_state(arrays, path, spec.record())
    decoded = csrfile.load_state(path)
    if decoded.keys() != arrays.keys() or not all(decoded[k].tobytes() == v.tobytes() for k, v in arrays.items()):
        raise CnnpruneError(f"{path} does not decode to the checkpoint bit for bit; this is a cnnprune bug")
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path), "bit_exact": True}


def _forms(config: ExportConfig) -> tuple[str, ...]:
    return ("dense",) + (("onnx",) if config.onnx else ()) + (("csr",) if config.sparse else ())


def _export_step(name: str, source: Path, config: ExportConfig, spec: ModelSpec) -> Step:
    """An export is current while its checkpoint (sha256), model spec and forms are unchanged."""
    suffixes = {"dense": (".pth",), "onnx": (".onnx",), "csr": (".csr.pt", csrfile.SUFFIX)}
    return Step(f"export {name}", (sha256_file(source), spec.record(), _forms(config), ONNX_OPSET,
                                   graphfile.VERSION if config.sparse else None),
                outputs=tuple(config.target / f"{name}{s}" for f in _forms(config) for s in suffixes[f]))


def run_export(config: ExportConfig, progress: bool = True) -> dict:
    """Export every checkpoint of ``config.src``; writes and returns ``export.json``."""
    src, out = Path(config.src), config.target
    names = source_names(src)
    spec = spec_of_folder(src)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    ledger = Ledger(out / "export.json", "models", fresh=config.fresh,
                    header={"torch": torch.__version__, "onnx_opset": ONNX_OPSET, "model": spec.record()})
    with Progress(progress).task("export", len(names)) as start:
        for name, source in names.items():
            start(name)
            if not source.is_file():
                raise CnnpruneError(f"checkpoint {source} is missing; rerun `python -m cnnprune.prune`")
            ledger.run(name, _export_step(name, source, config, spec),
                       lambda n=name, s=source: export_one(n, s, config, spec))
    return ledger.data


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = CliParser(prog="python -m cnnprune.export", description=__doc__.splitlines()[0])
    add_args(parser, ExportConfig)
    add_debug_flag(parser)
    config = from_args(ExportConfig, parser.parse_args(argv))
    record = run_export(config)
    table = Table(title=f"exports in {config.target}")
    for col in ("model", "dense bytes", "onnx bytes", "csr bytes", "csr / dense"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, e in record["models"].items():
        f = e["files"]
        table.add_row(name, f"{f['dense']['bytes']:,}", f"{f['onnx']['bytes']:,}" if "onnx" in f else "-",
                      f"{f['csr']['bytes']:,}" if "csr" in f else "-",
                      f"{e['csr_over_dense']:.1%}" if "csr_over_dense" in e else "-")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
