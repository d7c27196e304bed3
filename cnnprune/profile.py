"""Where the native engine's time goes, step by step.

``python -m cnnprune.profile --model artifacts/resnet50/one_shot_90.csr.pt --batch 16`` loads
the model as ``sparse.load`` does (per-layer calibration included; no dense fallback, so that
the native program is what runs), runs it once, then times every native step of the program on
its own: each step in turn, ``--rounds`` rounds, medians, on the buffers the forward pass left,
so a step starts from the cache state its predecessor leaves, as in the program. Each row gives
the step's kind and shape, its median ms, the useful GFLOP/s (nonzeros × output pixels for the
sparse steps, the dense count for GEMM, Winograd and linear steps) and the GB/s of the bytes
it must move at least (its input and output maps, fp32, interior pixels; the residual it adds;
its weights), which is near the machine's copy bandwidth where a step is bound by memory. Host
work between the native runs (ops PyTorch runs, layout conversions) is not timed, so the sum of
the steps is a little under a forward pass.

``--floor`` adds a bound to each step (``floor_ms``): the time it would take if every sparse
step ran at the rate of the span tile's bare inner loop (``csrc/floor.c``: one broadcast and 8
vector multiply-adds a nonzero, its group in L1, every thread busy) or, where less, at the dense
rate over all its multiply-adds (a large matrix product in PyTorch, the same threads); dense 1x1
GEMM and linear steps at the dense rate; Winograd at the dense rate over a quarter of its direct
count (F(4x4, 3x3): 36 products where a direct convolution has 144); every other cost (copies,
borders, pools, memory traffic, waiting) nothing. It bounds these kernels, not the machine (a
direct convolution that skips taps reading only the zero border does less than its useful count,
and another algorithm could do better): how far a speed goal lies from it says whether the
kernels themselves or the rest of the engine must change. The summary line also gives the
rate of the FMA units when every multiply-add loads its second operand from L1 (``fma_load_ns``),
as every multiply-add of a sparse kernel over unstructured weights does: how far the inner loop
itself is from the hardware.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from cnnprune import kernels as K
from cnnprune.errors import CliParser, CnnpruneError, add_debug_flag, run_cli
from cnnprune.hparams import add_args, from_args, opt
from cnnprune.kernels import STEP_NAMES, Step, StepRun

FLOAT = 4  # bytes


@dataclass(frozen=True)
class ProfileConfig:
    model: str = opt("artifacts/one_shot_90.csr.pt", "the pruned model (.csr.pt or .pth) in its artifacts folder")
    batch: int = opt(1, "batch size", parse=int)
    rounds: int = opt(9, "times each step is timed (the median counts)", parse=int)
    threads: int = opt(2, "threads of the native engine", parse=int)
    floor: bool = opt(False, "also each step's floor: its work at the bare inner loop's or the dense rate (measured first)")


@dataclass(frozen=True)
class StepTime:
    index: int
    kind: str
    shape: str  # input channels × height × width -> output channels × height × width
    ms: float  # median
    flops: float  # useful floating-point operations
    bytes: float  # the least the step moves
    floor: float | None = None  # ms at the floor's rates (floor_ms), where asked

    @property
    def gflops(self) -> float:
        return self.flops / self.ms / 1e6

    @property
    def gbytes(self) -> float:
        return self.bytes / self.ms / 1e6


# The floor's inner loop: a group of this many bytes of each thread's L1 data cache, and this many
# nonzeros an output channel per pass (about a 1x1 layer's per group at 90 % global sparsity)
FLOOR_GROUP_BYTES = 16 * 1024
FLOOR_PER_OUTPUT = 32
# Step kinds whose work is a sparse kernel's: useful FLOPs = nonzeros x output pixels
SPARSE_KINDS = (K.SPAN, K.CONV, K.CONV_S2, K.CONV_POOL, K.CONV_SPAN, K.CONV_POOL_S2)


@dataclass(frozen=True)
class Rates:
    """What the floor costs work at, GFLOP/s over all threads: useful work in the sparse span
    tile's inner loop alone, and a dense matrix product; and, for comparison only, the FMA units
    with a loaded operand (``fma_load_ns``)."""

    sparse: float
    dense: float
    loaded: float


def nonzeros(step: Step) -> int:
    """A sparse step's nonzero count: the last entry of its per-output-channel prefix sums."""
    return int(ctypes.cast(step.chan, ctypes.POINTER(ctypes.c_int32))[step.Cout])


def work(step: Step) -> tuple[float, float, str]:
    """Useful FLOPs, the least bytes moved and the shape of one step (input -> output map, per
    image: channels × height × width)."""
    n, c, h, w, co = step.N, step.C, step.H, step.W, step.Cout
    if step.kind == K.SPLIT:  # its H, W are the padded input's
        h, w = h - 2, w - 2
    ho, wo = (step.Ho, step.Wo) if step.kind in (K.CONV, K.CONV_S2, K.CONV_POOL, K.CONV_SPAN, K.CONV_POOL_S2) else (h, w)
    if step.kind in (K.SUBSAMPLE, K.MAXPOOL):
        ho, wo = h // 2, w // 2
    if step.kind in (K.SUBSAMPLE, K.MAXPOOL, K.SPLIT, K.SCALE, K.REPAD, K.PACK, K.WG_INPUT):
        co = c
    if step.kind == K.AVGPOOL:
        co, ho, wo = c, 1, 1
    elif step.kind == K.LINEAR:
        h = w = ho = wo = 1
    flops, weights, index = 0.0, 0, 2 if step.off16 else 4
    if step.kind in (K.SPAN, K.CONV, K.CONV_S2, K.CONV_POOL, K.CONV_SPAN, K.CONV_POOL_S2):
        nnz = nonzeros(step)
        flops, weights = 2.0 * nnz * ho * wo * n, nnz * (FLOAT + index)
    elif step.kind == K.LINEAR and step.ptr:  # its weight in CSR: row starts, then int32 indices and values
        nnz = int(ctypes.cast(step.ptr, ctypes.POINTER(ctypes.c_int32))[step.Cout])
        flops, weights = 2.0 * nnz * n, nnz * (FLOAT + 4) + (co + 1) * 4
    elif step.kind in (K.GEMM, K.WG_CONV, K.WG_FUSED, K.LINEAR):
        taps = 9 if step.kind in (K.WG_CONV, K.WG_FUSED) else 1  # Winograd: the direct convolution's count
        flops, weights = 2.0 * taps * c * co * ho * wo * n, c * co * taps * FLOAT
    if step.kind in (K.CONV_POOL, K.CONV_POOL_S2):  # only the pooled map is stored
        ho, wo = ho // 2, wo // 2
    out = co * ho * wo * n
    moved = (c * h * w * n + out * (2 if step.res else 1)) * FLOAT + weights
    return flops, float(moved), f"{c}×{h}×{w} -> {co}×{ho}×{wo}"


def measure_rates(threads: int, rounds: int = 3) -> Rates:
    """The floor's rates on this machine with ``threads`` threads, the best of ``rounds`` runs
    each: the inner loop (``inner_loop_ns``: ns a nonzero, each nonzero 8 vectors of the
    machine's width, 2 FLOPs a float), a 2048 x 2048 by 2048 x 2048 float32 ``torch.mm`` and
    multiply-adds with a loaded operand (``fma_load_ns``: ns a vector multiply-add)."""
    import torch

    from cnnprune.native_plan import SpanTile

    lib = K.library()
    piece = SpanTile(1).block_floats(lib.vector_width())  # floats one nonzero's multiply-adds cover
    channels = FLOOR_GROUP_BYTES // (piece * FLOAT)
    ns = min(lib.inner_loop_ns(channels, min(FLOOR_PER_OUTPUT, channels), 256, 200, threads) for _ in range(rounds))
    fma_ns = min(lib.fma_load_ns(1 << 20, threads) for _ in range(rounds))
    if ns <= 0 or fma_ns <= 0:
        raise CnnpruneError("the floor's inner loop could not run (out of memory?)")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
        torch.mm(a, b)  # warm-up
        seconds = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            torch.mm(a, b)
            seconds.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return Rates(sparse=threads * 2 * piece / ns, dense=2 * 2048**3 / min(seconds) / 1e9,
                 loaded=threads * 2 * lib.vector_width() / fma_ns)


def dense_flops(step: Step) -> float:
    """FLOPs of a sparse or linear step's layer run densely: every multiply-add of its input
    channels x output channels x taps (a grouped convolution's block diagonal counted whole)."""
    if step.kind == K.LINEAR:
        return 2.0 * step.C * step.Cout * step.N
    taps = 1 if step.kind == K.SPAN else step.k * step.k
    ho, wo = (step.H, step.W) if step.kind == K.SPAN else (step.Ho, step.Wo)
    return 2.0 * step.C * step.Cout * taps * ho * wo * step.N


def floor_ms(step: Step, flops: float, rates: Rates) -> float:
    """The least time (ms) of a step of ``flops`` useful FLOPs (``work``) at ``rates``, see the
    module's docstring: sparse work at the inner loop's rate or dense over all its multiply-adds,
    the less; dense GEMM and linear layers at the dense rate; Winograd at a quarter of its direct
    count; other steps free."""
    if step.kind in SPARSE_KINDS or (step.kind == K.LINEAR and step.ptr):
        return min(flops / rates.sparse, dense_flops(step) / rates.dense) / 1e6
    if step.kind in (K.GEMM, K.LINEAR):
        return flops / rates.dense / 1e6
    if step.kind in (K.WG_CONV, K.WG_FUSED):
        return flops / 4 / rates.dense / 1e6
    return 0.0


def steps_of(program: list) -> list[tuple[Step, StepRun]]:
    """Every native step of a forward pass (``plan["program"]``), with the run it belongs to."""
    return [(run.array[i], run) for run in program if isinstance(run, StepRun) for i in range(len(run.array))]


def profile(model, batch: int, rounds: int, rates: Rates | None = None) -> list[StepTime]:
    """Each native step of ``model`` (a ``cnnprune.native.NativeSparseResNet``) at ``batch``,
    timed alone ``rounds`` times in program order (medians); with ``rates``, each step's floor."""
    import torch

    engine = model.engine
    with torch.no_grad():
        model(torch.randn(batch, *engine.input_shape))
    plan = engine._program(batch)
    if plan.get("engine", "sparse") != "sparse":
        raise CnnpruneError(f"at batch {batch} the whole network runs {plan['engine']}: load without the dense fallback")
    steps = steps_of(plan["program"])
    singles = [((Step * 1)(step), run) for step, run in steps]
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for i, (one, run) in enumerate(singles):
            t0 = time.perf_counter()
            run.lib.run_steps(one, 1, run.threads)
            times[i].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for i, ((step, _), ts) in enumerate(zip(steps, times)):
        flops, moved, shape = work(step)
        rows.append(StepTime(i, STEP_NAMES[step.kind] + ("+res" if step.res else ""), shape, statistics.median(ts),
                             flops, moved, None if rates is None else floor_ms(step, flops, rates)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from cnnprune import sparse

    parser = CliParser(prog="python -m cnnprune.profile", description=__doc__.splitlines()[0])
    add_args(parser, ProfileConfig)
    add_debug_flag(parser)
    config = from_args(ProfileConfig, parser.parse_args(argv))
    if config.batch < 1 or config.rounds < 1 or config.threads < 1:
        raise CnnpruneError("--batch, --rounds and --threads must be at least 1")
    model = sparse.load(config.model, threads=config.threads, dense_fallback=False, plan_cache=False)
    rates = measure_rates(config.threads) if config.floor else None
    show(profile(model, config.batch, config.rounds, rates), config, rates)
    return 0


def show(rows: list[StepTime], config: ProfileConfig, rates: Rates | None) -> None:
    """The table of steps, the sum by kind and, with ``rates``, the floor's sum against the steps'."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{config.model}, batch {config.batch}, {config.threads} threads: native steps, "
                        f"median of {config.rounds}")
    columns = ("#", "step", "maps", "ms", "GFLOP/s", "GB/s") + (("floor ms",) if rates else ())
    for col in columns:
        table.add_column(col, justify="left" if col in ("step", "maps") else "right")
    for r in rows:
        floor = (f"{r.floor:.3f}",) if rates else ()
        table.add_row(str(r.index), r.kind, r.shape, f"{r.ms:.3f}", f"{r.gflops:.1f}" if r.flops else "",
                      f"{r.gbytes:.1f}", *floor)
    Console().print(table)
    by_kind: dict[str, float] = {}
    for r in rows:
        by_kind[r.kind] = by_kind.get(r.kind, 0.0) + r.ms
    total = sum(by_kind.values())
    flops = sum(r.flops for r in rows)
    print(f"sum of steps {total:.2f} ms, {flops / total / 1e6:.1f} GFLOP/s useful; by kind (ms): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))
    if rates:
        floor = sum(r.floor or 0.0 for r in rows)
        print(f"floor {floor:.2f} ms ({floor / total:.0%} of the steps' sum) at the inner loop's {rates.sparse:.1f} and "
              f"the dense product's {rates.dense:.1f} GFLOP/s, measured now with {config.threads} threads; "
              f"the inner loop at {rates.sparse / rates.loaded:.0%} of the FMA units' {rates.loaded:.1f} GFLOP/s "
              f"with a loaded operand")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
