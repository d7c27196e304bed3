"""im2col GEMM engines (CPU / CUDA): each folded convolution as a weight matrix × unfolded input,
the weight in ``torch.sparse`` CSR, torch's 2:4 semi-structured layout, or dense.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnprune.errors import CnnpruneError
from cnnprune.fold import FoldedConv, FoldedResNet

GEMM_LAYOUTS = {"torch-csr": "csr", "torch-2:4": "2:4", "torch-gemm": "dense"}
SEMI_BACKENDS = ("cusparselt", "cutlass")


def semi_structured(matrix: torch.Tensor, backend: str) -> torch.Tensor | None:
    """``matrix`` as a torch 2:4 semi-structured tensor for ``backend`` (cuSPARSELt or CUTLASS),
    or None where its shape is outside what both take (rows a multiple of 32, columns of 64):
    such a layer (the stem, fc) runs as a dense GEMM."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    rows, cols = matrix.shape
    if rows % 32 or cols % 64:
        return None
    cls = SparseSemiStructuredTensorCUTLASS if backend == "cutlass" else SparseSemiStructuredTensorCUSPARSELT
    return cls.from_dense(matrix)


def im2col(x: torch.Tensor, k: int, stride: int, padding: int) -> tuple[torch.Tensor, int, int]:
    """Unfold a (C, N, H, W) activation into the (C·k·k, N·Ho·Wo) GEMM operand in one strided
    copy (``F.unfold`` loops over images on CUDA: one kernel launch per image and layer)."""
    c, n = x.shape[:2]
    if k == 1 and stride == 1:
        return x.reshape(c, -1), x.shape[2], x.shape[3]
    if padding:
        x = F.pad(x, (padding,) * 4)
    patches = x.unfold(2, k, stride).unfold(3, k, stride)  # (C, N, Ho, Wo, ky, kx)
    ho, wo = patches.shape[2], patches.shape[3]
    return patches.permute(0, 4, 5, 1, 2, 3).reshape(c * k * k, n * ho * wo), ho, wo


class TorchGemmResNet(nn.Module):
    """Each folded conv as weight matrix (Cout, in·kh·kw) × im2col operand, the weight held in
    one of three layouts:

    - ``csr``: ``torch.sparse`` CSR (cuSPARSE on CUDA): the naive "just use torch.sparse"
      baseline for the report's unstructured masks;
    - ``2:4``: torch's semi-structured tensor (sparse tensor cores; CUDA, fp16/bf16, backend
      cuSPARSELt or CUTLASS): needs weights pruned 2:4 (``cnnprune.prune.prune_2_4``);
    - ``dense``: a plain dense GEMM on the same path, which isolates what the weight's format
      gains from what the im2col path costs.

    Activations are kept as (C, N, H, W), so a GEMM's output (Cout, N·Ho·Wo) is the next layer's
    input with no transpose. ``dtype`` is the compute precision (input cast to it, logits
    returned as float32).
    """

    def __init__(self, net: FoldedResNet, layout: str = "csr", device: str = "cpu",
                 dtype: torch.dtype = torch.float32, backend: str = "cusparselt") -> None:
        super().__init__()
        self.net, self.layout, self.device_name, self.dtype = net, layout, device, dtype
        self.mats: dict[str, torch.Tensor] = {}
        self.formats: dict[str, str] = {}
        for c in net.convs():
            m = torch.from_numpy(c.dense()).reshape(c.shape[0], -1).to(device=device, dtype=dtype)
            fmt = layout
            if layout == "csr":
                m = m.to_sparse_csr()
            elif layout == "2:4":
                from cnnprune.prune import is_2_4

                if m.shape[1] % 4 == 0 and not is_2_4(m):
                    raise CnnpruneError(f"layer {c.name} is not 2:4 sparse; prune the checkpoint with "
                                        "cnnprune.prune.prune_2_4 first")
                packed = semi_structured(m, backend) if m.shape[1] % 4 == 0 else None
                fmt, m = ("2:4", packed) if packed is not None else ("dense", m)
            self.mats[c.name], self.formats[c.name] = m, fmt
        self.biases = {c.name: torch.from_numpy(c.bias).to(device=device, dtype=dtype) for c in net.convs()}
        self.fc_w = torch.from_numpy(net.fc_weight).to(device=device, dtype=dtype)
        self.fc_b = torch.from_numpy(net.fc_bias).to(device=device, dtype=dtype)
        self.eval()

    def _conv(self, c: FoldedConv, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        cols, ho, wo = im2col(x, c.shape[2], c.stride, c.padding)
        mat, bias = self.mats[c.name], self.biases[c.name][:, None]
        if self.formats[c.name] == "csr":
            y = torch.sparse.mm(mat, cols) + bias
        elif self.formats[c.name] == "2:4":
            pad = -cols.shape[1] % 16  # the sparse kernels' dense operand: columns a multiple of 16
            y = torch.mm(mat, F.pad(cols, (0, pad)) if pad else cols)[:, : cols.shape[1]] + bias
        else:
            y = torch.addmm(bias, mat, cols)
        return y.reshape(-1, n, ho, wo)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device_name, dtype=self.dtype).permute(1, 0, 2, 3).contiguous()
        x = self._conv(self.net.stem, x).relu()
        x = F.max_pool2d(x, 3, 2, 1)  # (C, N, H, W): pools each (channel, image) plane alike
        for b in self.net.blocks:
            identity = self._conv(b.downsample, x) if b.downsample is not None else x
            y = self._conv(b.conv1, x).relu()
            x = (self._conv(b.conv2, y) + identity).relu()
        x = x.mean((2, 3)).t()
        return (x @ self.fc_w.t() + self.fc_b).float()
