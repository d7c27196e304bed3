"""Data-parallel training under ``torchrun``: one process per rank, gradients averaged by
DistributedDataParallel (gloo on CPU, NCCL on GPUs).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) everything here is a no-op and a
run is the plain single-process one. With it, ``--batch-size`` stays the *global* batch: every
rank draws the same permutation of the training split (same seed), takes its share of each
global batch, and DDP averages the gradients, so a step sees the same images as a single process
would. Only rank 0 writes outputs and prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's images of one global batch (every ``size``-th, from ``rank``)."""
        return indices[self.rank::self.size] if self.size > 1 else indices

    def steps(self, images: int, batch: int) -> int:
        """Optimizer steps per epoch: a last partial global batch too small to give every rank an
        image is dropped under DDP (a rank with no images cannot run BatchNorm in training mode)."""
        steps = -(-images // batch)
        if self.size > 1 and 0 < images % batch < self.size:
            steps -= 1
        return max(steps, 1)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when there are several ranks."""
        if self.size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = next(model.parameters()).is_cuda
        return DistributedDataParallel(model, device_ids=[self.local_rank] if on_gpu else None)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (for the epoch's logged loss and accuracy)."""
        if self.size <= 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device="cuda" if self.backend == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join(device_type: str) -> World:
    """The world torchrun set up for this process (initialising the process group), or a
    single-process world. ``device_type``: "cuda" (NCCL, one GPU per local rank) or "cpu" (gloo)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), local, backend)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") else model
