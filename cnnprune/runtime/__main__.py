"""``python -m cnnprune.runtime MODEL [--batch N] [--threads T]``: latency and peak memory of a
``.csr.safetensors`` or ``.graph.safetensors`` model served by the torch-free runtime, in this
process alone.

What it prints, measured here: the load time (file read, checks, BatchNorm folding where the
file is the report's ResNet18), the first
call's time (planning: calibration, or the cached plan), latency per batch over ``--runs``
calls after ``--warmup`` (median and interquartile range, ms; images/s from the median), and
the process's peak resident memory (VmHWM: everything it ever held, interpreter included).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from cnnprune.errors import CliParser, add_debug_flag, run_cli
from cnnprune.memprobe import peak_rss


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def parser() -> CliParser:
    p = CliParser(prog="python -m cnnprune.runtime", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a NAME.csr.safetensors or NAME.graph.safetensors file "
                                    "(python -m cnnprune.export --sparse)")
    p.add_argument("--batch", type=positive, default=1, help="images per call (default 1)")
    p.add_argument("--threads", type=positive, default=None, help="CPU threads (default: the cores available)")
    p.add_argument("--runs", type=positive, default=50, help="timed calls (default 50)")
    p.add_argument("--warmup", type=positive, default=5, help="untimed calls before timing (default 5)")
    p.add_argument("--recalibrate", action="store_true", help="time the layers afresh and replace the cached plan")
    p.add_argument("--no-cache", action="store_true", help="calibrate afresh, neither reading nor writing the plan cache")
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    t0 = time.perf_counter()
    from cnnprune import runtime

    model = runtime.load(args.model, threads=args.threads, cache=not args.no_cache, recalibrate=args.recalibrate)
    loaded = time.perf_counter() - t0
    cached = model.plan_cached(args.batch) and not args.recalibrate
    x = np.random.default_rng(0).standard_normal((args.batch, *model.input_shape), dtype=np.float32)
    t1 = time.perf_counter()
    model(x)
    first = time.perf_counter() - t1
    for _ in range(args.warmup):
        model(x)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t) * 1e3)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    foreign = [m for m in ("torch", "onnxruntime") if m in sys.modules]
    _, h, w = model.input_shape
    print(f"{model.path.name}: {model.classes} classes, {h}×{w}; batch {args.batch}, "
          f"{model.threads} threads")
    print(f"import + load {loaded:.3f} s; first call {first:.3f} s "
          f"({'cached plan' if cached else 'calibrated'})")
    print(f"latency median {med:.2f} ms, IQR {q1:.2f}–{q3:.2f} ms over {args.runs} calls "
          f"({args.batch * 1e3 / med:.0f} images/s)")
    print(f"peak memory {peak_rss() / 2**20:.1f} MiB (VmHWM); torch or onnxruntime loaded: "
          f"{', '.join(foreign) if foreign else 'neither'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
