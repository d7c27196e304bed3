"""BatchNorm folded into the convolutions of the CIFAR ResNet18: what every sparse engine executes.

w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε), so exact zeros stay zeros and the pruning's sparsity
is kept; the network becomes a stem, eight residual blocks and the classifier.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

BN_EPS = 1e-5


@dataclass
class FoldedConv:
    """A convolution with its BatchNorm folded in: y = conv(x, weight) + bias. ``weight`` is
    dense (Cout, Cin, k, k) float32, or, after ``compact()``, the (Cout, Cin·k·k) matrix in CSR
    with int32 indices (8 bytes per nonzero): how the native engine keeps it between plans."""

    name: str
    weight: torch.Tensor
    bias: torch.Tensor  # (Cout,)
    stride: int
    padding: int
    shape: tuple[int, int, int, int] = ()

    def __post_init__(self) -> None:
        if not self.shape:
            self.shape = tuple(self.weight.shape)

    def dense(self) -> torch.Tensor:
        if self.weight.layout == torch.strided:
            return self.weight
        return self.weight.to_dense().view(self.shape)

    def compact(self) -> FoldedConv:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "CSR support is in beta": storage only here
            m = self.dense().reshape(self.shape[0], -1).to_sparse_csr()
            csr = torch.sparse_csr_tensor(m.crow_indices().int(), m.col_indices().int(), m.values(), m.shape,
                                          check_invariants=False)
        return FoldedConv(self.name, csr, self.bias, self.stride, self.padding, self.shape)

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel() if self.weight.layout == torch.sparse_csr
                   else torch.count_nonzero(self.weight))

    @property
    def density(self) -> float:
        return self.nnz / float(np.prod(self.shape))

    def weight_bytes(self) -> int:
        """Bytes of the weight as held (dense, or CSR values and indices) and the bias."""
        w = self.weight
        held = [w] if w.layout == torch.strided else [w.values(), w.crow_indices(), w.col_indices()]
        return sum(t.numel() * t.element_size() for t in held + [self.bias])


def fold_bn(state: dict[str, torch.Tensor], conv: str, bn: str, stride: int, padding: int) -> FoldedConv:
    """w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε): exact zeros stay zeros, so sparsity is kept."""
    scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + BN_EPS)
    weight = state[f"{conv}.weight"] * scale.view(-1, 1, 1, 1)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    return FoldedConv(conv, weight.contiguous(), bias.contiguous(), stride, padding)


@dataclass
class Block:
    conv1: FoldedConv
    conv2: FoldedConv
    downsample: FoldedConv | None


@dataclass
class FoldedResNet:
    """The CIFAR ResNet18 as a list of folded convolutions: what both engines execute."""

    stem: FoldedConv
    blocks: list[Block]
    fc_weight: torch.Tensor
    fc_bias: torch.Tensor

    def convs(self) -> list[FoldedConv]:
        out = [self.stem]
        for b in self.blocks:
            out += [b.conv1, b.conv2] + ([b.downsample] if b.downsample else [])
        return out


def compact_net(net: FoldedResNet) -> FoldedResNet:
    """The same network with every convolution's weight in CSR (``FoldedConv.compact``)."""
    blocks = [Block(b.conv1.compact(), b.conv2.compact(), b.downsample.compact() if b.downsample else None)
              for b in net.blocks]
    return FoldedResNet(net.stem.compact(), blocks, net.fc_weight, net.fc_bias)


def fold_resnet(state: dict[str, torch.Tensor]) -> FoldedResNet:
    blocks = []
    for layer in range(1, 5):
        for index in range(2):
            p = f"layer{layer}.{index}"
            stride = 2 if layer > 1 and index == 0 else 1
            ds = fold_bn(state, f"{p}.downsample.0", f"{p}.downsample.1", stride, 0) \
                if f"{p}.downsample.0.weight" in state else None
            blocks.append(Block(fold_bn(state, f"{p}.conv1", f"{p}.bn1", stride, 1),
                                fold_bn(state, f"{p}.conv2", f"{p}.bn2", 1, 1), ds))
    return FoldedResNet(fold_bn(state, "conv1", "bn1", 1, 1), blocks,
                        state["fc.weight"].contiguous(), state["fc.bias"].contiguous())
