"""BatchNorm recalibration after pruning (beyond the report): re-estimate every BatchNorm's running
mean and variance from training images, leaving every weight, and so every mask, as it is.

Why: pruning 90 % of the weights shifts each layer's output distribution, while BatchNorm keeps
normalising with statistics measured on the unpruned network; re-measuring them takes forward
passes only (no labels, no gradient step) and is what restores accuracy when the lost accuracy is
a statistics mismatch rather than lost capacity. The statistics are the cumulative average over
all calibration batches (``momentum=None``), so every image counts the same.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnprune.data import Split
from cnnprune.model import build_model

BATCH = 200  # images per forward pass: BatchNorm's per-batch variance is unbiased over 200·H·W values


@torch.no_grad()
def recalibrate_model(model: nn.Module, images: Split, batch: int = BATCH) -> nn.Module:
    """Reset and re-estimate the running statistics of every BatchNorm of ``model`` from ``images``
    (cumulative average); the model is returned in eval mode, its parameters untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, _ in images.batches(batch):
            model(x)
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return model


def recalibrate_state(state: dict[str, torch.Tensor], images: Split) -> dict[str, torch.Tensor]:
    """A permanent (pruned) state_dict with its BatchNorm statistics re-estimated from ``images``;
    every other tensor is returned bit for bit."""
    model = build_model()
    model.load_state_dict(state)
    recalibrate_model(model, images)
    new = model.state_dict()
    return {k: new[k].clone() if _is_bn_statistic(k) else v for k, v in state.items()}


def _is_bn_statistic(key: str) -> bool:
    return key.endswith((".running_mean", ".running_var", ".num_batches_tracked"))
