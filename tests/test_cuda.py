from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnnprune.cuda import cuda_info, graphed
from cnnprune.errors import CnnpruneError
from cnnprune.model import load_model


def test_graphed_needs_a_cuda_input() -> None:
    with pytest.raises(CnnpruneError, match="CUDA input"):
        graphed(torch.nn.Identity(), torch.zeros(1, 3, 32, 32))


def test_cuda_info_says_none_without_gpu() -> None:
    info = cuda_info()
    assert (info is None) == (not torch.cuda.is_available())
    if info is not None:
        assert info["gpu"] and info["cuda"] and "cudnn_allow_tf32" in info


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_replay_equals_eager(artifacts: Path) -> None:
    model = load_model(artifacts / "one_shot_75.pth").cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    run = graphed(model, torch.zeros_like(x))
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(run(x), want, atol=1e-5, rtol=1e-5)
    y = torch.randn_like(x)
    with torch.no_grad():
        assert torch.allclose(run(y), model(y), atol=1e-5, rtol=1e-5), "replay reads the new input"
    with pytest.raises(CnnpruneError, match="captured for input"):
        run(torch.zeros(2, 3, 32, 32, device="cuda"))
