"""What the harness measures besides latency: counts, MACs, memory, accuracy and agreement.

- counts: total and nonzero parameters (conv+linear and all tensors), per layer;
- MACs: dense and nonzero multiply-accumulates per image (the model's input size), per layer and global;
  their ratio is the theoretical speedup of unstructured sparsity (as ShrinkBench reports it):
  the FLOP limit of an engine that multiplies every nonzero (one that finds nonzeros without
  effect on the output, in dead channels, can pass it);
- logit spread: whether the logits depend on the input at all;
- memory: peak RSS (bytes) of a fresh process that serves one form with the least it needs
  (:mod:`cnnprune.memprobe`) and runs inferences, next to the same process's RSS before loading,
  plus the bytes the weights take in memory;
- accuracy of every form on the whole test split, and agreement between forms (identical
  top-1 and max |logit difference| against PyTorch dense).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from cnnprune.archs import ModelSpec
from cnnprune.errors import CnnpruneError

FORMS = ("dense", "onnx", "sparse")


def _cpuinfo(key: str, path: str = "/proc/cpuinfo") -> str | None:
    """The value of the first ``key: value`` line of ``path`` (Linux's cpuinfo), None if absent."""
    try:
        with open(path) as f:
            return next((l.split(":", 1)[1].strip() for l in f if l.startswith(key)), None)
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_detail(root: str = "/sys/devices/system/cpu/cpu0/cache", cpuinfo: str = "/proc/cpuinfo") -> str:
    """What decides the native kernels' speed beside the model name (Linux; "" elsewhere): the
    widest vector instructions the CPU has (the kernels are built with ``-march=native``: 16
    floats a vector with AVX-512, 8 with AVX2) and one core's data cache sizes, e.g.
    "AVX-512; L1d 48K, L2 2048K, L3 266240K". Reports from machines that differ here differ in
    speedup too: a dense engine gains more from wider vectors than a sparse kernel does."""
    flags = (_cpuinfo("flags", cpuinfo) or "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    caches = []
    for index in sorted(Path(root).glob("index[0-9]*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return "; ".join(part for part in (isa, ", ".join(caches)) if part)


def layer_macs(state: dict[str, torch.Tensor], spec: ModelSpec | None = None) -> dict[str, dict[str, int]]:
    """Per conv/linear layer: dense MACs, nonzero MACs, weights and nonzero weights, per image of
    ``spec``'s input size (default: the report's model at 32×32). A grouped convolution's weight
    already holds only the in-channels of its group, so weights × output pixels counts it right."""
    from cnnprune.model import checked_model, prunable_modules

    spec = spec or ModelSpec()
    model = checked_model(state, "the measured checkpoint", spec.arch)
    spatial: dict[str, int] = {}
    hooks = []
    for name, module in prunable_modules(model):
        def hook(mod, inp, out, name=name):
            spatial[name] = int(out.shape[2] * out.shape[3]) if out.ndim == 4 else 1
        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, spec.input_size, spec.input_size))
    for h in hooks:
        h.remove()
    out = {}
    for name, module in prunable_modules(model):
        w = module.weight
        nnz = int((w != 0).sum())
        out[name] = {"weights": w.numel(), "nonzero_weights": nnz,
                     "dense_macs": w.numel() * spatial[name], "nonzero_macs": nnz * spatial[name]}
    return out


def counts(state: dict[str, torch.Tensor], spec: ModelSpec | None = None) -> dict:
    """Global parameter and MAC counts of a permanent state_dict (parameters = all float tensors
    except BatchNorm running statistics)."""
    per_layer = layer_macs(state, spec)
    params = {k: v for k, v in state.items() if v.is_floating_point() and "running_" not in k}
    total = sum(v.numel() for v in params.values())
    nonzero = sum(int((v != 0).sum()) for v in params.values())
    dense_macs = sum(l["dense_macs"] for l in per_layer.values())
    nz_macs = sum(l["nonzero_macs"] for l in per_layer.values())
    conv_total = sum(l["weights"] for l in per_layer.values())
    conv_nz = sum(l["nonzero_weights"] for l in per_layer.values())
    return {"params_total": total, "params_nonzero": nonzero,
            "prunable_total": conv_total, "prunable_nonzero": conv_nz,
            "sparsity": 1 - conv_nz / conv_total,
            "dense_macs": dense_macs, "nonzero_macs": nz_macs,
            "flop_limit_speedup": dense_macs / nz_macs if nz_macs else float("inf"),
            "per_layer": per_layer}


def logit_spread(model: torch.nn.Module, spec: ModelSpec, images: int = 4) -> dict[str, float]:
    """How much the logits depend on the input, over ``images`` seeded random inputs: the largest
    difference between two images' logits (``logit_spread``) beside the largest logit magnitude
    (``logit_scale``). A spread of 0 means every input gets the same logits: pruning cut every path
    from the input to the output (untrained weights pruned hard do that), and an engine that finds
    the dead channels may skip most of the network."""
    with torch.no_grad():
        y = model.eval()(spec.example(images, seed=1)).float()
    return {"logit_spread": float((y.max(0).values - y.min(0).values).max()), "logit_scale": float(y.abs().max())}


# ---------------------------------------------------------------- loading forms


def forms_of(spec: ModelSpec) -> tuple[str, ...]:
    """The forms measured for ``spec``'s models: the sparse one where the sparse engine runs them."""
    from cnnprune.sparse import unsupported

    return FORMS if unsupported(spec) is None else tuple(f for f in FORMS if f != "sparse")


def load_form(form: str, artifacts: Path, name: str, threads: int) -> object:
    """A callable (N, 3, S, S) float tensor → logits tensor for one exported form."""
    from cnnprune.model import spec_of_folder

    torch.set_num_threads(threads)
    if form == "dense":
        from cnnprune.model import load_model

        return load_model(artifacts / f"{name}.pth", spec_of_folder(artifacts).arch)
    if form == "onnx":
        from cnnprune.export import ort_session

        path = artifacts / f"{name}.onnx"
        if not path.is_file():
            raise CnnpruneError(f"{path} is missing; run `python -m cnnprune.export`")
        session = ort_session(path, threads)
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    if form == "sparse":
        from cnnprune import sparse

        return sparse.load(artifacts / f"{name}.csr.pt", threads=threads, plan_cache=False)
    raise CnnpruneError(f"form {form!r} is unknown; choose one of {', '.join(FORMS)}")


def measure_memory(form: str, artifacts: Path, name: str, batch: int, runs: int, threads: int) -> dict:
    """Peak RSS (bytes) of a fresh Python process that serves ``form`` with the least it needs
    (:mod:`cnnprune.memprobe`: torch alone, onnxruntime alone, or the torch-free runtime) and
    runs ``runs`` inferences; for ONNX, the weights held are its initializers' bytes."""
    cmd = [sys.executable, "-m", "cnnprune.memprobe", "--form", form, "--artifacts", str(artifacts), "--name", name,
           "--batch", str(batch), "--runs", str(runs), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CnnpruneError(f"memory measurement of {name} ({form}) failed: {proc.stderr.strip()[-300:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    if form == "onnx":
        record["weights_in_memory"] = onnx_initializer_bytes(artifacts / f"{name}.onnx")
    return record


def onnx_initializer_bytes(path: Path) -> int:
    """Bytes of an ONNX graph's weights (its initializers), as onnxruntime holds them."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def evaluate_forms(artifacts: Path, name: str, split, threads: int, batch_size: int = 250,
                   limit: int | None = None) -> dict:
    """Accuracy (fraction 0–1) of each form on the whole split and agreement with dense; the dense
    entry also keeps per-image correctness (1/0) for paired tests between models."""
    from cnnprune.model import spec_of_folder

    results: dict = {}
    ref_pred = ref_logits = None
    for form in forms_of(spec_of_folder(artifacts)):
        model = load_form(form, artifacts, name, threads)
        preds, logits = [], []
        t0 = time.perf_counter()
        with torch.no_grad():
            for x, _ in split.batches(batch_size, limit):
                out = torch.as_tensor(model(x))
                logits.append(out)
                preds.append(out.argmax(1))
        pred, logit = torch.cat(preds), torch.cat(logits)
        acc = float((pred == split.labels[: len(pred)]).float().mean())
        entry = {"accuracy": acc, "images": int(len(pred)), "seconds": time.perf_counter() - t0}
        if ref_pred is None:
            ref_pred, ref_logits = pred, logit
            entry["predictions"] = (pred == split.labels[: len(pred)]).int().tolist()
        else:
            entry["top1_agreement_with_dense"] = float((pred == ref_pred).float().mean())
            entry["max_abs_logit_diff_vs_dense"] = float((logit - ref_logits).abs().max())
        results[form] = entry
    return results
