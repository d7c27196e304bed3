from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnprune import sparse
from cnnprune.buffers import Arena, BufferPool
from cnnprune.errors import CnnpruneError
from cnnprune.fold import Csr, fold_resnet
from cnnprune.model import load_model
from cnnprune.native_plan import MODES


@pytest.mark.parametrize("name", ["unpruned", "one_shot_50", "iterative_75", "one_shot_90"])
@pytest.mark.parametrize("calibrate", [False, True])
def test_native_engine_matches_dense(artifacts: Path, name: str, calibrate: bool) -> None:
    ref = load_model(artifacts / f"{name}.pth")
    model = sparse.load(artifacts / f"{name}.csr.pt", threads=2, calibrate=calibrate)
    assert not model.training
    for n in (1, 3, 8):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = ref(x)
        got = model(x)
        assert got.shape == (n, 10)
        assert (got - want).abs().max() <= 1e-4
        assert torch.equal(got.argmax(1), want.argmax(1))
        assert torch.equal(model(x), got), "repeat calls with reused buffers are identical"


def test_pure_sparse_path_matches_dense_with_every_layer_sparse(artifacts: Path) -> None:
    ref = load_model(artifacts / "one_shot_75.pth")
    model = sparse.load(artifacts / "one_shot_75.csr.pt", calibrate=False, dense_fallback=False)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-4
    assert all(v["engine"] == "sparse" for v in model.layer_choice(5).values())


@pytest.mark.parametrize("name", ["unpruned", "one_shot_90"])
def test_winograd_layers_match_dense(artifacts: Path, name: str) -> None:
    ref = load_model(artifacts / f"{name}.pth")
    model = sparse.load(artifacts / f"{name}.csr.pt", threads=2, dense_fallback=False, layer_mode="winograd")
    for n in (1, 3, 8, 32):  # per-column and vectorised transforms, two-step and fused variants
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = ref(x)
        got = model(x)
        assert (got - want).abs().max() <= 1e-4
        assert torch.equal(got.argmax(1), want.argmax(1))
        modes = {k: v["engine"] for k, v in model.layer_choice(n).items()}
        assert [k for k, m in modes.items() if m == "winograd"] == [
            f"layer{i}.{j}.conv{c}" for i in (1, 2, 3) for j in (0, 1) for c in (1, 2) if (i, j, c) not in
            ((2, 0, 1), (3, 0, 1))], "every 3x3 stride-1 layer of layers 1-3, nothing else"
    fused = {k: p.fused for k, p in model.engine._plans[32]["convs"].items() if p.mode == "winograd"}
    assert fused["layer1.0.conv1"] and not fused["layer3.0.conv2"], "fused where there are panels for every thread"


def test_calibration_without_winograd_never_picks_it(artifacts: Path) -> None:
    model = sparse.load(artifacts / "one_shot_50.csr.pt", threads=2, dense_fallback=False, winograd=False)
    choice = model.layer_choice(8)
    assert {v["engine"] for v in choice.values()} <= {"sparse", "dense"}
    assert all(v["winograd_ms"] != v["winograd_ms"] for v in choice.values()), "not timed: nan"
    timed = sparse.load(artifacts / "one_shot_50.csr.pt", threads=2, dense_fallback=False).layer_choice(8)
    assert timed["layer1.0.conv1"]["winograd_ms"] > 0 and timed["conv1"]["winograd_ms"] != timed["conv1"]["winograd_ms"]
    for v in timed.values():
        tried = {m: v[f"{m}_ms"] for m in MODES if v[f"{m}_ms"] == v[f"{m}_ms"]}
        fastest = min(tried, key=tried.get)
        assert v["engine"] == fastest or (v["engine"] == "sparse" and tried["sparse"] <= 1.1 * tried[fastest]), \
            "the fastest mode timed is the one kept, near ties going to the sparse kernel"


def test_torch_csr_reference_matches_dense(artifacts: Path) -> None:
    ref = load_model(artifacts / "one_shot_90.pth")
    model = sparse.load(artifacts / "one_shot_90.csr.pt", engine="torch-csr")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-4


def test_bn_folding_keeps_zeros(artifacts: Path) -> None:
    state = sparse.read_state(artifacts / "one_shot_90.pth")
    net = fold_resnet(state)
    assert np.array_equal(net.stem.weight == 0, state["conv1.weight"].numpy() == 0)


def test_bad_inputs(artifacts: Path) -> None:
    model = sparse.load(artifacts / "one_shot_90.csr.pt", calibrate=False)
    with pytest.raises(CnnpruneError, match=r"\(N, 3, 32, 32\)"):
        model(torch.zeros(1, 3, 28, 28))
    with pytest.raises(CnnpruneError, match="engine"):
        sparse.load(artifacts / "one_shot_90.csr.pt", engine="magic")
    with pytest.raises(CnnpruneError, match="layer_mode"):
        sparse.load(artifacts / "one_shot_90.csr.pt", layer_mode="fast")
    if not torch.cuda.is_available():
        with pytest.raises(CnnpruneError, match="no CUDA GPU"):
            sparse.load(artifacts / "one_shot_90.csr.pt", engine="torch-csr", device="cuda")


def test_torch_gemm_dense_path_matches_dense(artifacts: Path) -> None:
    ref = load_model(artifacts / "iterative_75.pth")
    model = sparse.load(artifacts / "iterative_75.csr.pt", engine="torch-gemm")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-4
    assert set(model.formats.values()) == {"dense"}


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (1, 1, 0)])
def test_im2col_matches_unfold(k: int, stride: int, padding: int) -> None:
    from cnnprune.gemm import im2col

    x = torch.randn(3, 5, 7, 6)  # (N, C, H, W)
    want = F.unfold(x, k, padding=padding, stride=stride)  # (N, C·k·k, L)
    got, ho, wo = im2col(x.permute(1, 0, 2, 3).contiguous(), k, stride, padding)
    assert ho * wo == want.shape[2]
    assert torch.equal(got, want.permute(1, 0, 2).reshape(want.shape[1], -1))


def test_torch_2_4_needs_cuda_and_half_precision(artifacts: Path) -> None:
    with pytest.raises(CnnpruneError, match="CUDA"):
        sparse.load(artifacts / "one_shot_90.csr.pt", engine="torch-2:4")
    if torch.cuda.is_available():
        with pytest.raises(CnnpruneError, match="float16 or bfloat16"):
            sparse.load(artifacts / "one_shot_90.csr.pt", engine="torch-2:4", device="cuda", dtype=torch.float32)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda_only
def test_torch_csr_on_cuda_matches_dense(artifacts: Path) -> None:
    ref = load_model(artifacts / "one_shot_90.pth")
    model = sparse.load(artifacts / "one_shot_90.csr.pt", engine="torch-csr", device="cuda")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got, want = model(x.cuda()).cpu(), ref(x)
    assert (got - want).abs().max() <= 1e-3 * max(1.0, want.abs().max().item())


@cuda_only
def test_torch_2_4_on_cuda_matches_its_dense_model(artifacts: Path) -> None:
    from cnnprune.prune import write_2_4

    path = write_2_4(artifacts / "unpruned.pth", artifacts / "semi_2_4_test.pth")
    ref = load_model(path)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        want = ref(x)
    scale = max(1.0, want.abs().max().item())
    gemm = sparse.load(path, engine="torch-gemm", device="cuda", dtype=torch.float16)
    got_gemm = gemm(x.cuda()).cpu()
    assert (got_gemm - want).abs().max() <= 2e-2 * scale, "fp16 against fp32"
    for backend in ("cusparselt", "cutlass"):
        if backend == "cutlass" and torch.cuda.get_device_capability()[0] != 8:
            with pytest.raises(CnnpruneError, match="Ampere"):
                sparse.load(path, engine="torch-2:4", device="cuda", backend=backend)
            continue
        if backend == "cusparselt" and not torch.backends.cusparselt.is_available():
            continue
        semi = sparse.load(path, engine="torch-2:4", device="cuda", backend=backend)
        assert sum(f == "2:4" for f in semi.formats.values()) == 19, "every conv but the 3-channel stem"
        for n in (1, 8):
            got = semi(x[:n].cuda()).cpu()
            assert (got - got_gemm[:n]).abs().max() <= 2e-2 * scale, backend
    with pytest.raises(CnnpruneError, match="not 2:4 sparse"):
        sparse.load(artifacts / "one_shot_50.csr.pt", engine="torch-2:4", device="cuda")


def test_folded_weights_are_kept_compact_and_round_trip(artifacts: Path) -> None:
    net = fold_resnet(sparse.read_state(artifacts / "one_shot_90.pth"))
    conv = net.blocks[7].conv2
    small = conv.compact()
    assert isinstance(small.weight, Csr) and small.weight.indices.dtype == np.int32
    assert np.array_equal(small.dense(), conv.weight) and small.shape == tuple(conv.weight.shape)
    assert small.nnz == int((conv.weight != 0).sum()) and small.density == pytest.approx(conv.density)
    assert small.weight_bytes() == small.nnz * 8 + (conv.shape[0] + 1) * 4 + conv.bias.size * 4, \
        "values and column indices: 8 bytes per nonzero"


def test_held_weight_bytes_count_what_each_mode_keeps(artifacts: Path) -> None:
    path = artifacts / "one_shot_90.csr.pt"
    dense_bytes = sum(t.numel() * 4 for t in load_model(artifacts / "one_shot_90.pth").state_dict().values()
                      if t.is_floating_point())
    x = torch.randn(4, 3, 32, 32)
    plain = sparse.load(path, threads=2, dense_fallback=False, layer_mode="sparse")
    before = plain.held_weight_bytes()
    plain(x)
    assert all(isinstance(c.weight, Csr) or c.density >= 0.5 for c in plain.net.convs()), "dense only where smaller"
    after = plain.held_weight_bytes()
    assert before < after < dense_bytes / 2, "CSR plus one batch size's offsets and values, at 90 %"
    wino = sparse.load(path, threads=2, dense_fallback=False, layer_mode="winograd")
    wino(x)
    plan = wino.engine._plans[4]["convs"]
    u_bytes = sum(p.u.nbytes for p in plan.values() if p.mode == "winograd")
    assert u_bytes == sum(36 * p.conv.shape[0] * p.conv.shape[1] * 4 for p in plan.values() if p.mode == "winograd")
    assert all(p.off is None for p in plan.values() if p.mode == "winograd"), "unused sparse operands dropped"
    assert wino.held_weight_bytes() > after + u_bytes / 2, "Winograd's transformed weights are counted"


def test_buffer_pool_hands_out_again_only_what_was_given_back() -> None:
    pool = BufferPool(Arena())
    a, b = pool.padded(16, 2, 2, 2), pool.padded(16, 2, 2, 2)
    assert a.shape == (16, 4, 4, 2) and not np.shares_memory(a, b)
    pool.give(a, a, None)  # repeats and None are ignored
    assert pool.padded(16, 2, 2, 2) is a
    assert not np.shares_memory(pool.padded(16, 2, 2, 2), a), "given back once, handed out once"
    phase = pool.phase((16, 4, 4, 2))  # the same shape as the padded buffers, another kind
    assert phase.shape == a.shape
    pool.give(phase)
    assert pool.padded(16, 2, 2, 2) is not phase, "phase planes are never reused as padded buffers (their border)"
    assert pool.phase((16, 4, 4, 2)) is phase
    off = BufferPool(Arena(), reuse=False)
    c = off.padded(16, 2, 2, 2)
    off.give(c)
    assert off.padded(16, 2, 2, 2) is not c


def test_a_second_load_plans_from_the_cache_and_recalibrate_times_afresh(artifacts: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnprune.engine import NativeEngine

    timed = []
    choose = NativeEngine._choose_layers
    monkeypatch.setattr(NativeEngine, "_choose_layers", lambda self, n, plan: (timed.append(n), choose(self, n, plan)))
    path, x = artifacts / "one_shot_90.csr.pt", torch.randn(2, 3, 32, 32)

    def modes(**options) -> dict:
        model = sparse.load(path, threads=1, dense_fallback=False, **options)
        with torch.no_grad():
            model(x)
        return {k: v["engine"] for k, v in model.engine.layer_choice(2).items()}

    first = modes(recalibrate=True)  # times even where an earlier test left a plan
    assert timed == [2] and modes() == first and timed == [2], "the next load plans from the cache"
    modes(recalibrate=True)
    modes(plan_cache=False)
    assert timed == [2, 2, 2]
