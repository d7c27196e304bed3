"""Calibration's timing: interleaved blocks tell the slower functions, and only what is still
undecided is timed on (sleeping functions stand in for engines and layers)."""

from __future__ import annotations

import time

from cnnprune import timing
from cnnprune.timing import LONG_MS, best_ms, interleaved_ms, out_after_warm, raced_ms


def test_interleaved_timing_tells_the_slower_functions() -> None:
    slow, fast, middle = interleaved_ms([lambda: time.sleep(0.006), lambda: time.sleep(0.001),
                                         lambda: time.sleep(0.003)], block_ms=10, warm_ms=2)
    assert slow > middle > fast >= 1.0


def counting_sleep(calls, key, seconds: float):
    """A function that sleeps ``seconds`` and counts its calls in ``calls[key]``."""
    def run() -> None:
        calls[key] += 1
        time.sleep(seconds)
    return run


def test_interleaved_timing_times_on_only_what_is_still_open() -> None:
    calls = [0, 0, 0]

    def sleeper(i: int, s: float):
        return counting_sleep(calls, i, s)

    seen: list[list[float]] = []

    def still_open(ms: list[float]) -> list[int]:
        seen.append(ms)
        return [0, 2]

    ms = interleaved_ms([sleeper(0, 0.002), sleeper(1, 0.004), sleeper(2, 0.002)], block_ms=10, warm_ms=1,
                        still_open=still_open)
    assert len(seen) == 1 and all(m > 0 for m in seen[0])  # asked once, after the first half round
    assert calls[0] > calls[1] and calls[2] > calls[1]  # the decided one was timed in one block only
    assert ms[1] >= 3.5
    # decided after the first half: one block each, at most 1 warm-up + 6 timed 1-ms calls
    # (two blocks would be at least 2 x (1 + 3))
    calls[:] = [0, 0, 0]
    interleaved_ms([sleeper(0, 0.001), sleeper(1, 0.001)], block_ms=5, warm_ms=0.5, still_open=lambda ms: [])
    assert 4 <= calls[0] <= 7 and 4 <= calls[1] <= 7


def test_a_dense_engine_far_behind_after_its_warm_up_call_is_not_timed() -> None:
    calls = [0, 0, 0, 0]
    # 13x and 1.3x the fastest dense one: far from WARM_OUT (3x) on either side, so that a sleep
    # overshooting by a millisecond or two on a busy host does not move either across it
    fns = [counting_sleep(calls, 0, 0.012), counting_sleep(calls, 1, 0.003), counting_sleep(calls, 2, 0.040),
           counting_sleep(calls, 3, 0.004)]
    ms = interleaved_ms(fns, block_ms=10, warm_ms=0.5, out_after_warm=out_after_warm)
    assert calls[2] == 1 and ms[2] >= 39.5  # its warm-up call is its figure
    assert calls[3] > 2 * 3  # timed in both blocks
    assert calls[0] > 2 * 3  # the sparse program (index 0) is never out, however slow
    assert not out_after_warm(1, 100.0, [1.0, float("nan"), float("nan")])  # nothing dense timed yet


def test_raced_timing_times_close_ways_again_and_plain_losers_once() -> None:
    calls = {"fast": 0, "near": 0, "slow": 0}

    def way(name: str, s: float):
        return counting_sleep(calls, name, s)

    ms = raced_ms({"fast": way("fast", 0.011), "near": way("near", 0.012), "slow": way("slow", 0.03)},
                  repeats=4, close=0.5)  # wide: a sleep can overshoot by ms here
    # one call, long enough to be its own warm-up, and one to confirm: 30 ms is plainly behind 11 ms
    assert calls["slow"] == 2
    assert calls["fast"] >= 1 + 2 and calls["near"] >= 1 + 2  # within 50 %: timed on (2 calls fill NEAR_MS)
    assert ms["fast"] < ms["near"] < ms["slow"] and ms["fast"] >= 11
    calls.update(fast=0, slow=0)
    raced_ms({"fast": way("fast", 0.011), "slow": way("slow", 0.03)}, repeats=4, close=0.5)
    assert calls == {"fast": 1, "near": calls["near"], "slow": 2}  # nothing close: only the loser confirmed


def test_a_way_put_out_by_one_stalled_call_is_timed_again() -> None:
    calls = {"fast": 0, "stalled": 0}

    def stalled() -> None:  # 0.5 ms a call, the first one stalled for 20
        calls["stalled"] += 1
        time.sleep(0.02 if calls["stalled"] == 1 else 0.0005)

    ms = raced_ms({"fast": counting_sleep(calls, "fast", 0.004), "stalled": stalled}, repeats=3, close=0.25)
    assert ms["stalled"] < ms["fast"] and calls["stalled"] >= 2


def test_a_short_call_is_timed_after_an_untimed_warm_up_and_a_long_one_is_its_own(monkeypatch) -> None:
    """Each call takes the time it is given (the clock replaced): with real sleeps a stalled host
    (CI, 2026-12-03) made a 0.2 ms call take over LONG_MS, and the warm-up counted."""
    calls = {"short": 0, "long": 0}
    took = {"short": 0.0002, "long": 2 * LONG_MS / 1e3}

    def scripted(fn) -> float:
        fn()
        return took[fn.key]

    def way(key: str):
        def run() -> None:
            calls[key] += 1
        run.key = key
        return run

    monkeypatch.setattr(timing, "_seconds", scripted)
    assert best_ms(way("short"), 1, min_ms=0.01) >= 0.2
    assert calls["short"] == 2  # an untimed warm-up and one timed call
    assert best_ms(way("long"), 1, min_ms=LONG_MS) >= 2 * LONG_MS
    assert calls["long"] == 1


def test_a_dense_engine_far_behind_the_sparse_program_is_out_once_a_dense_engine_was_timed() -> None:
    nan = float("nan")
    assert out_after_warm(2, 100.0, [10.0, 40.0, nan])  # 10x the sparse program, under 3x onnxruntime
    assert not out_after_warm(2, 100.0, [40.0, 40.0, nan])  # 2.5x either
    assert not out_after_warm(1, 100.0, [10.0, nan, nan])  # no dense engine timed yet
    assert not out_after_warm(0, 1e6, [10.0, 40.0, nan])  # the sparse program never is
