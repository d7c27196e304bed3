"""How calibration times the ways to run a layer and the engines that can run a whole network
on a shared machine: each candidate briefly, then only those near the fastest again
(``raced_ms``), and whole networks interleaved in palindromic blocks (``interleaved_ms``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

# Calibration times every candidate briefly first and times on only those this close (fraction)
# to the fastest: a layer's ways (``raced_ms``) and the whole network's engines (``undecided``).
# A wider margin times more; a narrower one lets a single noisy call decide. ResNet-50 at 224,
# 90 %, batch 16: calibration 54 s -> 22 s, the same engine chosen (the README has the figures).
RACE_CLOSE = 0.25
# How long (ms) ``raced_ms`` times each way of a layer in its first round, and the near ones in
# its second (stopping there after 2 calls once this is spent); a warm-up call of ``LONG_MS`` or
# more is itself a timed call (``best_ms``). ResNet-50 90 % at 224: per-layer timing at batch
# 16, 10 / 40 ms with every warm-up untimed -> these (the README has the figures).
FIRST_MS = 5.0
NEAR_MS = 10.0
LONG_MS = 2.0
# A dense engine whose warm-up call alone took this many times the fastest dense engine's timed
# call so far is out of the whole-network race untimed: a fresh engine's first call measured up
# to 2.1x its next ones (OpenVINO at batch 1; onnxruntime 1.5x at 16), so its own calls would be
# over 1.4x that engine's, past ``RACE_CLOSE``. Eager PyTorch at 224 px and batch 16 took 2.2-3.8x
# onnxruntime, 2.3 s a call
WARM_OUT = 3.0


def undecided(ms: list[float]) -> list[int]:
    """Of the sparse program (index 0) and the dense engines (the rest), timed once each, those
    to time on: none where the sparse program is more than ``RACE_CLOSE`` faster or slower than
    the fastest dense engine (the decision is plain), else it and the dense engines within
    ``RACE_CLOSE`` of the fastest."""
    best = min(ms[1:])
    if abs(ms[0] / best - 1) > RACE_CLOSE:
        return []
    return [0] + [i for i in range(1, len(ms)) if ms[i] <= (1 + RACE_CLOSE) * best]


def out_after_warm(i: int, warm_ms: float, ms: list[float]) -> bool:
    """Whether dense engine ``i`` (index 0 is the sparse program) is out of the race after its
    warm-up call: over ``WARM_OUT`` times the fastest dense engine timed so far, or, once a dense
    engine has been timed, the sparse program's figure (its own calls would be over 1.4x that
    program's, so it cannot win: eager PyTorch at 224 px and batch 16, 1.3 s a call, was timed
    beside a sparse program of 0.3 s and onnxruntime of 0.53 s). A dense engine must be timed
    first, so the fastest dense engine's figure is a timed call except where the sparse program
    beats every dense engine by that much."""
    dense = [m for m in ms[1:] if m == m]  # nan: not timed yet
    timed = dense + [ms[0]] if ms[0] == ms[0] else dense
    return i > 0 and bool(dense) and warm_ms > WARM_OUT * min(timed)


def interleaved_ms(fns: list[Callable[[], object]], rounds: int = 1, block_ms: float = 100.0,
                   warm_ms: float = 30.0, still_open: Callable[[list[float]], list[int]] | None = None,
                   out_after_warm: Callable[[int, float, list[float]], bool] | None = None) -> list[float]:
    """Median ms per call of each of ``fns`` over blocks in palindromic order (A B C C B A,
    ``rounds`` times), so that a machine whose speed drifts weighs on all alike. Each block
    first runs untimed calls for ``warm_ms`` (at least 1): the thread pool that ran last
    (onnxruntime's spinning workers, OpenMP's) keeps the cores busy for a while after it
    returns, and the next engine's first calls pay for it; alternating single calls measured
    that, not the engines. A block times calls for ``block_ms`` and at least 3 of them, or one
    or two where they take over ``3 * block_ms`` together. ``still_open(medians so far)``: after the first half round, the
    functions whose comparison is not yet decided (indices); only they are timed on, so a
    decision that one pass makes plain costs one pass (at 224 px and batch 16 a call takes
    0.5-1.5 s, and four engines in full palindromes were 40 s). ``out_after_warm(index, ms of
    its last warm-up call, medians so far)``: in the first block, a function it declares out is
    not timed further; its figure is that warm-up call, and it is out of the rest of the run
    (eager PyTorch at 224 px and batch 16 takes 2.3 s a call, 2.2-3.8x onnxruntime)."""
    times: list[list[float]] = [[] for _ in fns]
    out: set[int] = set()

    def block(i: int) -> None:
        fn = fns[i]
        t_end, warm = time.perf_counter() + warm_ms / 1e3, 0
        while warm < 1 or time.perf_counter() < t_end:
            last_ms = _seconds(fn) * 1e3
            warm += 1
        if not times[i] and out_after_warm is not None and out_after_warm(i, last_ms, medians()):
            times[i].append(last_ms)
            out.add(i)
            return
        start, timed = time.perf_counter(), 0
        while True:
            spent = (time.perf_counter() - start) * 1e3
            if spent >= block_ms and (timed >= 3 or spent >= 3 * block_ms):
                break
            times[i].append(_seconds(fn) * 1e3)
            timed += 1

    def medians() -> list[float]:
        return [float(np.median(t)) if t else float("nan") for t in times]

    order = list(range(len(fns)))
    for r in range(rounds):
        for i in order:
            block(i)
        if r == 0 and (still_open is not None or out):
            open_ = set(still_open(medians()) if still_open is not None else order) - out
            order = [i for i in order if i in open_]
            if len(order) < 2:
                break
        for i in order[::-1]:
            block(i)
    return medians()


def raced_ms(runs: dict[str, Callable[[], object]], repeats: int, close: float) -> dict[str, float]:
    """Best ms per call of each way to run a layer, timed in two rounds: each first briefly
    (``best_ms`` filling ``FIRST_MS``: one call where calls take ``LONG_MS`` or more), then only
    those within ``close`` (fraction) of the fastest again, to ``repeats`` calls or ``NEAR_MS``
    (a way put out by a figure of one long call, once more first):
    a layer whose choice the first round makes plain costs one or two calls per way (at 224 px
    and batch 16 calls of 10-30 ms, 53 layers x 3 ways x 5 calls were 12 s of calibration)."""
    ms = {mode: best_ms(fn, 1, min_ms=FIRST_MS) for mode, fn in runs.items()}
    for mode, fn in runs.items():
        # a figure of LONG_MS or more may be a single call, and a stall of the shared machine in
        # it put the report's ResNet18 at batch 1 on Winograd for a 4x4 layer (the sparse kernel
        # timed 11 ms for 0.07): a way it would put out of the race is timed once more
        if ms[mode] >= LONG_MS and ms[mode] > (1 + close) * min(ms.values()):
            ms[mode] = min(ms[mode], best_ms(fn, 1, min_ms=0.0, warm=False))
    lead = min(ms.values())
    near = [mode for mode in runs if ms[mode] <= (1 + close) * lead]
    if len(near) > 1:
        for mode in near:
            ms[mode] = min(ms[mode], best_ms(runs[mode], repeats, max_ms=NEAR_MS, warm=False))
    return ms


def best_ms(fn, repeats: int, min_ms: float = 10.0, most: int = 200, max_ms: float = 40.0, warm: bool = True) -> float:
    """Fastest of at least ``repeats`` calls and of as many more as fit in ``min_ms`` (at most
    ``most``), after one warm-up call: at batch 1 a layer takes ~0.1 ms, and the best of 5 such
    calls flipped layers between modes from one load to the next on a shared machine. A warm-up
    call of ``LONG_MS`` or more counts as the first call: what it pays cold (the weights, a few
    MB at most, read from memory once) is a few per cent of it. Calls that take long stop at 2
    once ``max_ms`` is spent: at 224 px and batch 16 a layer takes 10-30 ms, and 52 layers x 3
    modes x 6 calls were 20 s of calibration. ``warm``: False where the same call has just run
    (a second round, ``raced_ms``). The caller writes every buffer ``fn`` writes once before
    (``buffers.touched``): a fresh mapping's first write faults its pages in, which would be
    most of a long first call."""
    best, spent, count = float("inf"), 0.0, 0
    if warm:
        took = _seconds(fn)
        if took * 1e3 >= LONG_MS:
            best, spent, count = took, took, 1
    while count < repeats or (spent < min_ms / 1e3 and count < most):
        if count >= 2 and spent >= max_ms / 1e3:
            break
        took = _seconds(fn)
        best, spent, count = min(best, took), spent + took, count + 1
    return best * 1e3


def _seconds(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` took."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
