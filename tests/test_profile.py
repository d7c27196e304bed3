"""The per-step profile (cnnprune.profile): every native step of a program timed, its useful
FLOPs equal to nonzeros × output pixels of the network's convolutions, its least bytes moved,
and the command's one-line errors."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cnnprune import kernels as K
from cnnprune.graph import trace
from cnnprune.kernels import conv_step, library, span_step
from cnnprune.native import NativeSparseResNet
from cnnprune.native_plan import padded
from cnnprune.profile import main, profile, work


def test_a_span_step_counts_its_nonzeros_and_its_maps() -> None:
    library()
    src, dst, res = padded(6, 5, 4, 3), padded(7, 5, 4, 3), padded(7, 5, 4, 3)
    chan = np.array([0, 2, 2, 5, 6, 6, 9, 11], dtype=np.int32)  # 11 nonzeros over 7 output channels
    ptr = chan.copy()
    off, val, bias = np.zeros(11, np.uint16), np.ones(11, np.float32), np.zeros(7, np.float32)
    flops, moved, shape = work(span_step(src, 7, 1, ptr, chan, off, val, bias, dst, res, True))
    pixels = 5 * 4 * 3
    assert flops == 2 * 11 * pixels
    assert moved == (6 * pixels + 2 * 7 * pixels) * 4 + 11 * (4 + 2)
    assert shape == "6×5×4 -> 7×5×4"


def test_a_stride_2_convolution_on_phase_planes_names_its_input_channels() -> None:
    phases = padded(4 * 5, 4, 4, 2)  # 4 phase planes of 5 channels of an 8x8 map
    chan = np.array([0, 3, 9], dtype=np.int32)
    ptr = np.zeros(2 * 9 + 1, dtype=np.int32)
    step = conv_step(phases, 4, 4, 2, 1, ptr, chan, np.zeros(9, np.int32), np.ones(9, np.float32), np.zeros(2, np.float32),
                     padded(2, 4, 4, 2), None, True, (3, 2, 1, 8, 8))
    assert step.kind == K.CONV and step.C == 5
    flops, moved, shape = work(step)
    assert flops == 2 * 9 * 4 * 4 * 2 and shape == "5×8×8 -> 2×4×4"
    assert moved == (5 * 8 * 8 * 2 + 2 * 4 * 4 * 2) * 4 + 9 * (4 + 4)


def test_the_profile_times_every_step_and_counts_the_networks_work() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4)).eval()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data[torch.rand(m.weight.shape) < 0.6] = 0
    host = NativeSparseResNet(trace(model, (3, 12, 12)), threads=2, layer_mode="sparse")
    rows = profile(host, 2, 3)
    assert rows and all(r.ms > 0 and r.bytes > 0 for r in rows)
    assert [r.index for r in rows] == list(range(len(rows)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pixels = [12 * 12, 12 * 12, 6 * 6]
    linear = model[-1].weight  # 40 % dense: in CSR at batch 2 (native_plan.sparse_linear), its nonzeros counted
    want = sum(2 * int((c.weight != 0).sum()) * p * 2 for c, p in zip(convs, pixels)) + 2 * int((linear != 0).sum()) * 2
    assert sum(r.flops for r in rows) == want
    assert rows[-1].kind == "linear"


def test_the_command_rejects_a_bad_batch_in_one_line(capsys) -> None:
    from cnnprune.errors import run_cli

    assert run_cli(main, ["--batch", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch" in err[0]


def test_step_kinds_and_names_match_the_c_header() -> None:
    import re

    header = (K._source_folder() / "kernels.h").read_text()
    numbers = {name.lower(): int(n) for name, n in re.findall(r"STEP_(\w+) = (\d+)", header)}
    assert numbers == {name: i for i, name in enumerate(K.STEP_NAMES)}
    assert all(getattr(K, name.upper()) == i for i, name in enumerate(K.STEP_NAMES))


def test_the_floor_costs_sparse_work_at_the_lesser_of_its_two_rates() -> None:
    from cnnprune.profile import Rates, dense_flops, floor_ms

    rates = Rates(sparse=100.0, dense=200.0, loaded=150.0)  # GFLOP/s
    span = K.Step(kind=K.SPAN, C=64, Cout=32, H=7, W=5, N=2)
    dense = 2.0 * 64 * 32 * 7 * 5 * 2
    assert dense_flops(span) == dense
    sparse_work = 0.1 * dense  # 10 % dense: the inner loop's rate bounds it
    assert floor_ms(span, sparse_work, rates) == sparse_work / 100.0 / 1e6
    nearly_dense = 0.9 * dense  # at half the dense rate, running it densely is the lesser bound
    assert floor_ms(span, nearly_dense, rates) == dense / 200.0 / 1e6
    conv = K.Step(kind=K.CONV, C=8, Cout=16, k=3, Ho=4, Wo=6, N=1, H=8, W=12)
    assert dense_flops(conv) == 2.0 * 8 * 16 * 9 * 4 * 6


def test_the_floor_costs_dense_steps_at_the_dense_rate_and_winograd_at_a_quarter() -> None:
    from cnnprune.profile import Rates, floor_ms

    rates = Rates(sparse=100.0, dense=200.0, loaded=150.0)
    assert floor_ms(K.Step(kind=K.GEMM, C=64, Cout=64, H=8, W=8, N=1), 4e6, rates) == 4e6 / 200.0 / 1e6
    assert floor_ms(K.Step(kind=K.WG_FUSED, C=64, Cout=64, H=8, W=8, N=1), 4e6, rates) == 1e6 / 200.0 / 1e6
    assert floor_ms(K.Step(kind=K.LINEAR, C=10, Cout=4, N=3), 240.0, rates) == 240.0 / 200.0 / 1e6
    for kind in (K.PACK, K.SPLIT, K.SUBSAMPLE, K.AVGPOOL, K.MAXPOOL):
        assert floor_ms(K.Step(kind=kind, C=4, H=4, W=4, N=1), 0.0, rates) == 0.0


def test_the_inner_loop_runs_and_refuses_arguments_out_of_range() -> None:
    lib = library()
    assert lib.inner_loop_ns(16, 8, 4, 3, 2) > 0
    assert lib.inner_loop_ns(16, 16, 1, 1, 1) > 0  # every channel of the group a nonzero
    for bad in ((0, 1, 1, 1, 1), (16, 17, 1, 1, 1), (16, 0, 1, 1, 1), (16, 8, 0, 1, 1), (16, 8, 4, 0, 1),
                (16, 8, 4, 1, 0), (65537, 8, 4, 1, 1), (65536, 65536, 65536, 1, 1)):
        assert lib.inner_loop_ns(*bad) == -1.0


def test_loaded_multiply_adds_run_and_refuse_arguments_out_of_range() -> None:
    lib = library()
    assert lib.fma_load_ns(1000, 1) > 0
    assert lib.fma_load_ns(1, 2) > 0
    for bad in ((0, 1), ((1 << 26) + 1, 1), (1, 0), (1, 1025), (-5, 2)):
        assert lib.fma_load_ns(*bad) == -1.0


def test_measured_rates_are_positive_and_the_summary_names_the_floor(capsys) -> None:
    from cnnprune.profile import ProfileConfig, StepTime, measure_rates, show

    rates = measure_rates(2, rounds=1)
    assert rates.sparse > 0 and rates.dense > 0 and rates.loaded > 0
    rows = [StepTime(0, "span", "4×2×2 -> 4×2×2", 2.0, 1e6, 1e3, 0.5), StepTime(1, "pack", "3×2×2 -> 3×2×2", 1.0, 0.0, 1e3, 0.0)]
    show(rows, ProfileConfig(floor=True), rates)
    out = capsys.readouterr().out
    assert "floor ms" in out and "floor 0.50 ms (17% of the steps' sum)" in out
    assert f"the inner loop at {rates.sparse / rates.loaded:.0%} of the FMA units' {rates.loaded:.1f} GFLOP/s" in out


def test_the_command_prints_each_steps_floor_for_a_real_model(artifacts, capsys) -> None:
    assert main(["--model", str(artifacts / "one_shot_90.csr.pt"), "--batch", "1", "--rounds", "1", "--floor"]) == 0
    out = capsys.readouterr().out
    assert "floor ms" in out and "of the steps' sum) at the inner loop's" in out
    floor = float(out.split("\nfloor ")[1].split(" ms")[0])
    assert floor > 0
