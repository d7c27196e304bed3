"""CUDA helpers for the harness: the best dense engine on a GPU, and what a report needs to say
how a CUDA figure was taken.

At batch 1 ResNet18 on a GPU is bound by kernel launches (some 60 per forward pass), not by
arithmetic, so eager PyTorch is a weak dense baseline there; replaying a captured CUDA graph
removes the launch cost, and a sparse engine claiming a speedup must beat that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnprune.errors import CnnpruneError


def graphed(model: nn.Module, example: torch.Tensor, warmup: int = 3) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` captured in a CUDA graph for inputs shaped like ``example`` (on the GPU).

    Warm-up calls run on a side stream first (cuDNN autotuning, allocator pools), as the CUDA
    graph rules require. The returned callable copies its input into the graph's static input,
    replays the graph and returns the static output tensor, which the next call overwrites:
    clone it to keep it.
    """
    if example.device.type != "cuda":
        raise CnnpruneError(f"CUDA graphs need a CUDA input, got one on {example.device}")
    static_in = example.detach().clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup):
            model(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = model(static_in)

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape != static_in.shape:
            raise CnnpruneError(f"this CUDA graph was captured for input {tuple(static_in.shape)}, "
                                f"got {tuple(x.shape)}; capture one per batch size")
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


def cuda_info() -> dict | None:
    """GPU, CUDA/cuDNN versions and the precision settings that change fp32 results (TF32), or
    None without a GPU."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cusparselt": bool(getattr(torch.backends, "cusparselt", None) and torch.backends.cusparselt.is_available()),
            "driver": _driver_version()}


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
