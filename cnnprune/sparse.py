"""Sparse inference for pruned CNNs: ``cnnprune.sparse.load(path) -> nn.Module``.

The report's ResNet18 has the hand-made plan described below; every other architecture is
planned from its traced graph by the same engine (:mod:`cnnprune.graph`,
:mod:`cnnprune.graph_engine`: BatchNorm folded, activations and residual adds fused, ops without
a native kernel run in PyTorch between native segments).

Engines that run a ``.csr.pt`` file (or any permanent checkpoint):

- ``native`` (CPU, the fast path): BatchNorm folded into the convolutions, every
  convolution a sparse *direct* convolution in C (``csrc/sparse_conv.c``) over activations
  in a padded (C, H+2, W+2, N) layout: each nonzero weight is one vectorised multiply-add over
  a contiguous run of an input row, with no im2col (the spatially-vectorised sparse × dense
  scheme of XNNPACK's "Fast Sparse ConvNets"); stride-2 convolutions read 4 phase planes.
  Each output channel's nonzeros are cut into input-channel groups (``group_size``) so that
  what a register tile reads stays in L1 while the whole output-channel chunk uses it, and
  into segments by kernel column and row, so that a tile skips the taps that read only the
  zero border (most of layer4's at 2x2 maps); offsets are 16-bit where they fit
  (``sparse_operands``).
  Global pruning leaves the early layers dense (the README gives the measured densities), and
  there a kernel doing one multiply-add per nonzero does more work than
  Winograd F(4x4, 3x3) (``csrc/winograd.c``: 36 products per 4x4 tile and channel pair, the
  equivalent of 75 % sparsity, as dense GEMMs near the FMA peak), so 3x3 stride-1 layers may
  also run that way. It is a dense algorithm: what it gains is not pruning's, and the report
  shows the same engine on the unpruned model beside the pruned ones to keep the two apart.
  Per layer and per batch size it times the sparse kernel, Winograd (where the shape allows)
  and PyTorch's dense convolution (oneDNN) on the same shape, once, and keeps the fastest
  (near ties, within 10 %: the sparse kernel, ``engine.SPARSE_TIE``)
  (``layer_choice``); unless the whole network beats every dense engine at that batch size by
  at least 5 % (lightly pruned models), it runs the fastest of them instead (``engine_for``);
  the dense engines are those the harness compares against (onnxruntime, PyTorch eager,
  OpenVINO fp32 where installed), so it is never slower than dense, within the noise of one
  calibration.
  Threads: ``threads`` (default: torch's), used by the kernels and the fallback alike.
- ``torch-csr``: the naive reference, ``torch.sparse`` CSR × unfolded input (cuSPARSE on
  CUDA), for the comparison and for GPUs; ``torch-2:4`` and ``torch-gemm`` run the same
  im2col path with 2:4 semi-structured (sparse tensor cores) or dense weights
  (``TorchGemmResNet``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnprune import csr
from cnnprune.archs import DEFAULT_ARCH, ModelSpec
from cnnprune.errors import CnnpruneError
from cnnprune.fileio import sha256_file
from cnnprune.fold import fold_resnet
from cnnprune.gemm import GEMM_LAYOUTS, SEMI_BACKENDS, TorchGemmResNet
from cnnprune.model import checked_model, checked_skeleton, load_state_dict, spec_of_folder
from cnnprune.native import NativeSparseResNet
from cnnprune.plancache import PlanCache

ENGINES = ("native", "torch-csr", "torch-2:4", "torch-gemm")


def unsupported(spec: ModelSpec, engine: str = "native") -> str | None:
    """Why ``engine`` cannot run ``spec``'s models (None: it can). The native engine runs any
    architecture ``torch.fx`` can trace, at any input size (:mod:`cnnprune.graph`: the report's
    network keeps its own hand-made plan, ``fold_resnet``); the im2col engines run the report's
    network at 32×32 only. Any class count works."""
    if engine != "native" and not spec.is_default:
        return f"engine {engine} runs {DEFAULT_ARCH} at 32×32 only, not {spec.arch} at {spec.input_size}×{spec.input_size}"
    return None


def read_state(path: str | Path, arch: str = DEFAULT_ARCH) -> dict[str, torch.Tensor]:
    """Dense state_dict from a ``.csr.pt`` file or a permanent ``.pth`` checkpoint of ``arch``
    (any class count)."""
    state = _file_state(Path(path))
    checked_skeleton(state, str(path), arch)
    return state


def read_model(path: str | Path, arch: str = DEFAULT_ARCH) -> nn.Module:
    """The dense model of such a file, checked and built once (the whole-network fallbacks'
    source: ``read_state`` + ``checked_model`` built it twice)."""
    return checked_model(_file_state(Path(path)), str(path), arch, own=True)


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    return csr.load_state(path) if path.name.endswith(".csr.pt") else load_state_dict(path)


def load(path: str | Path, engine: str = "native", device: str = "cpu", threads: int | None = None,
         calibrate: bool = True, dense_fallback: bool = True, dtype: torch.dtype | None = None,
         backend: str = "cusparselt", winograd: bool = True, layer_mode: str | None = None,
         plan_cache: bool = True, spec: ModelSpec | None = None, recalibrate: bool = False) -> nn.Module:
    """Load a pruned model for sparse inference: input (N, 3, S, S) → logits (N, classes), eval mode.

    ``spec``: the architecture and input size (default: what the ``manifest.json`` beside
    ``path`` records, else the report's ResNet18 at 32×32). Other architectures than the
    report's run ``native`` only, planned from their traced graph (``model.plan_summary(batch)``
    says which ops run natively and why the others run in PyTorch).

    ``engine``: ``native`` (C kernels, CPU, per-layer choice of sparse kernel, Winograd or
    dense), ``torch-csr`` (``torch.sparse``; CPU or CUDA), ``torch-2:4`` (semi-structured sparse
    tensor cores; CUDA, a checkpoint pruned 2:4) or ``torch-gemm`` (the same im2col path with
    dense weights).
    ``threads``: CPU threads for the native kernels. ``calibrate``: time each way a layer can
    run (sparse kernel, Winograd, dense oneDNN) per layer and per batch size on first use (a
    few hundred ms per new batch size; seconds at batch 250) and keep the fastest;
    ``dense_fallback``: also compare the whole network with the dense engines (onnxruntime,
    PyTorch eager, OpenVINO where installed) and run the fastest where one wins, so the result
    is never slower than dense (onnxruntime and OpenVINO run the model's ONNX export where the
    ``export.json`` beside ``path`` records it unchanged, else a new export). Without calibration every layer
    runs sparse. ``winograd``: let calibration pick Winograd F(4x4, 3x3) (a dense algorithm
    with 4x fewer multiplies; fp32 rounding error about 10x a direct convolution's) where it is faster; False keeps the
    sparse kernel and dense oneDNN only. ``plan_cache``: reuse (and keep) calibration results on
    disk for this file, machine and settings (``cnnprune.plancache``), so that a second load
    plans without timing; the benchmark turns it off, so that every pass times afresh.
    ``recalibrate``: time afresh and replace what the cache holds (a plan timed while the
    machine was busy stays until then). ``layer_mode`` ("sparse", "winograd" or "gemm", the
    native dense 1x1 kernel of graph-planned networks): run every layer that can this way, no
    per-layer timing (tests, A/B measurements). ``dtype`` (im2col
    engines): compute precision, default float32, float16 for ``torch-2:4``; ``backend``
    (``torch-2:4``): ``cusparselt`` or ``cutlass``.
    """
    if engine not in ENGINES:
        raise CnnpruneError(f"engine {engine!r} is unknown; choose one of {', '.join(ENGINES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CnnpruneError(f"device {device}: no CUDA GPU is available here; use device='cpu'")
    if engine == "torch-2:4":
        dtype = dtype or torch.float16
        _check_2_4(device, dtype, backend)
    spec = spec or spec_of_folder(Path(path).parent)
    why = unsupported(spec, engine)
    if why:
        raise CnnpruneError(f"{path}: {why}")
    if not spec.is_default:
        return _load_graph(path, spec, device, threads, calibrate, dense_fallback, winograd, layer_mode,
                           plan_cache, recalibrate)
    state = read_state(path)
    net = fold_resnet({k: v.numpy() for k, v in state.items()})
    if engine == "native":
        if device != "cpu":
            raise CnnpruneError("the native sparse engine runs on the CPU; use engine='torch-csr' for CUDA")
        return NativeSparseResNet(net, threads, calibrate, winograd=winograd, layer_mode=layer_mode,
                                  **_native_extras(Path(path), spec, dense_fallback, plan_cache, recalibrate))
    return TorchGemmResNet(net, GEMM_LAYOUTS[engine], device, dtype or torch.float32, backend)


def _native_extras(path: Path, spec: ModelSpec, dense_fallback: bool, plan_cache: bool, recalibrate: bool) -> dict:
    """The native engine's dense fallback (read from ``path`` again when first needed, with the
    ONNX export that ``export.json`` vouches for, if any) and plan cache."""
    from cnnprune.export import exported_onnx

    cache = PlanCache(sha256_file(path)) if plan_cache else None

    def onnx_of() -> Path | None:
        return exported_onnx(path, cache.model_sha256 if cache else sha256_file(path), spec)

    return {"dense_fallback": (lambda: read_model(path, spec.arch)) if dense_fallback else None,
            "onnx_of": onnx_of if dense_fallback else None, "cache": cache, "recalibrate": recalibrate}


def _load_graph(path: str | Path, spec: ModelSpec, device: str, threads: int | None, calibrate: bool,
                dense_fallback: bool, winograd: bool, layer_mode: str | None, plan_cache: bool,
                recalibrate: bool) -> nn.Module:
    """Any architecture on the native engine, planned from its traced graph (:mod:`cnnprune.graph`)."""
    from cnnprune.graph import trace

    if device != "cpu":
        raise CnnpruneError("the native sparse engine runs on the CPU; use engine='torch-csr' for CUDA")
    graph = trace(read_model(path, spec.arch), (3, spec.input_size, spec.input_size))
    return NativeSparseResNet(graph, threads, calibrate, winograd=winograd, layer_mode=layer_mode,
                              **_native_extras(Path(path), spec, dense_fallback, plan_cache, recalibrate))


def _check_2_4(device: str, dtype: torch.dtype, backend: str) -> None:
    """What ``torch-2:4`` needs: a CUDA device, half precision, a backend this GPU and build have."""
    if not device.startswith("cuda"):
        raise CnnpruneError("engine 'torch-2:4' runs on CUDA GPUs only (sparse tensor cores); use device='cuda'")
    if dtype not in (torch.float16, torch.bfloat16):
        raise CnnpruneError(f"engine 'torch-2:4' computes in float16 or bfloat16, not {dtype}")
    if backend not in SEMI_BACKENDS:
        raise CnnpruneError(f"backend {backend!r} is unknown; choose one of {', '.join(SEMI_BACKENDS)}")
    if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
        raise CnnpruneError("this PyTorch build has no cuSPARSELt; use backend='cutlass'")
    if backend == "cutlass" and torch.cuda.get_device_capability(device)[0] != 8:
        raise CnnpruneError("PyTorch's CUTLASS 2:4 kernels run on compute capability 8.x (Ampere) only; "
                            "use backend='cusparselt' on this GPU")
