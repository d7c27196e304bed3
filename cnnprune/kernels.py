"""Build and load the C kernels of the native CPU path (``csrc/``: ``sparse_conv.c``, the
sparse direct convolution and the step executor, its tile functions in ``tiles.h``,
``tiles_s1.c`` and ``tiles_s2.c``; ``winograd.c``, the dense Winograd F(4x4, 3x3) convolution;
``gemm1x1.c``, the dense 1x1 convolution; ``maps.c``, per-channel scaling and re-padding;
``floor.c``, the span tile's inner loop alone, for the profile's floor; ``kernels.h``, what they
share).

The sources are compiled once per machine with the system C compiler (``gcc -O3
-march=native -fopenmp``, as many files at once as there are cores; the README has the time)
into a cache folder (``$CNNPRUNE_CACHE`` or ``~/.cache/cnnprune``), named by a hash of the
sources, flags and CPU so that a copy never runs on a machine it was not built for. The library is written to a temporary name and renamed,
so concurrent first uses are safe.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from cnnprune.errors import CnnpruneError

CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11"]

_SIGNATURES = {
    "run_steps": [ctypes.c_void_p, ctypes.c_int, ctypes.c_int],
}

# The tile files first: they are most of the compile time (see _build)
SOURCES = ("tiles_s1.c", "tiles_s2.c", "sparse_conv.c", "winograd.c", "gemm1x1.c", "maps.c", "floor.c", "kernels.h",
           "tiles.h")

# Step kinds (step_t.kind), in the order of the C side's STEP_* numbers; their names as the profile prints them
STEP_NAMES = ("pack", "conv", "maxpool", "split", "avgpool", "wg_input", "wg_conv", "wg_fused", "conv_pool", "linear", "span",
              "subsample", "gemm", "conv_s2", "scale", "repad", "conv_span", "conv_pool_s2")
PACK, CONV, MAXPOOL, SPLIT, AVGPOOL, WG_INPUT, WG_CONV, WG_FUSED, CONV_POOL, LINEAR, SPAN, SUBSAMPLE, GEMM, CONV_S2, \
    SCALE, REPAD, CONV_SPAN, CONV_POOL_S2 = range(len(STEP_NAMES))


class Step(ctypes.Structure):
    """One operation of a native forward pass, ``step_t`` in ``csrc/kernels.h`` (the same
    fields in the same order): C, H, W, N describe the input, Ho, Wo, Cout the output; off16:
    the nonzeros' offsets are uint16 (else int32); k, stride, pad: a sparse convolution's
    kernel size (its runs have k*k segments), stride and padding; pieces: a CONV_SPAN step's
    tile width (``conv_step``)."""

    _fields_ = ([(name, ctypes.c_int32) for name in ("kind", "C", "H", "W", "N", "Ho", "Wo", "Cout", "ngroups", "relu", "off16",
                                                     "k", "stride", "pad", "pieces")]
                + [("src_row", ctypes.c_int64)]
                + [(name, ctypes.c_void_p) for name in ("src", "res", "dst", "ptr", "chan", "off", "val", "bias")])


class StepRun:
    """Consecutive native steps run in one call of ``run_steps`` (one parallel region);
    ``keep`` holds the arrays their raw addresses point into."""

    def __init__(self, lib: ctypes.CDLL, steps: list[Step], threads: int, keep: list) -> None:
        self.lib, self.threads, self.keep = lib, threads, keep
        self.array = (Step * len(steps))(*steps)

    def __call__(self) -> None:
        self.lib.run_steps(self.array, len(self.array), self.threads)


def conv_step(src: np.ndarray, ho: int, wo: int, cout: int, ngroups: int, ptr: np.ndarray, chan: np.ndarray,
              off: np.ndarray, val: np.ndarray, bias: np.ndarray, dst: np.ndarray, res: np.ndarray | None, relu: bool,
              geometry: tuple[int, int, int, int, int], direct: bool = False, pieces: int = 0) -> Step:
    """The CONV step of one sparse convolution over padded (C, H, W, N) ``src`` (phase planes for
    stride 2, or with ``direct`` the padded input itself: a batch of one or two whole vectors,
    ``direct_stride2``); ``ptr``, ``chan``, ``off`` (uint16 or int32) and ``val`` as
    ``native_plan.sparse_operands`` made them; ``geometry``: kernel size, stride, padding, input
    height and width (which taps of an output pixel read only the zero border, and are
    skipped). ``pieces`` (1-3): the CONV_SPAN step instead, tiles of that many pieces of 8
    vectors over each plane's interior span (``conv_span_eligible``). The step holds raw
    addresses: the caller keeps the arrays alive."""
    n = src.shape[3]
    k, stride, pad, hin, win = geometry
    if pieces:
        # stride 1 reads the padded input, stride 2 its phase planes in the output's padded geometry
        planes = (hin + 2, win + 2) if stride == 1 else (ho + 2, wo + 2)
        if not conv_span_eligible(k, stride, pad, hin, win, ho, wo) or src.shape[1:3] != planes:
            raise ValueError(f"a span convolution needs a 3x3 kernel, stride 1 or 2, padding 1 and input planes of "
                             f"{planes}, not k={k} stride={stride} pad={pad} over {tuple(src.shape)}")
        maps = [a.shape for a in (dst, res) if a is not None]
        if not 1 <= pieces <= 3 or any(m != (cout, ho + 2, wo + 2, n) for m in maps):
            raise ValueError(f"a span convolution takes 1-3 pieces and padded ({cout}, {ho + 2}, {wo + 2}, {n}) outputs, "
                             f"not {pieces} and {maps}")
        flag = pieces | (SPAN_ROUND if tail_slack(src) >= ROUND_SLACK else 0)
        return Step(kind=CONV_SPAN, src=src.ctypes.data, C=src.shape[0] // stride**2, H=hin, W=win, N=n, Ho=ho, Wo=wo,
                    Cout=cout, k=k, stride=stride, pad=1, pieces=flag, ngroups=ngroups, ptr=ptr.ctypes.data, chan=chan.ctypes.data,
                    off=off.ctypes.data, off16=int(off.dtype == np.uint16), val=val.ctypes.data, bias=bias.ctypes.data,
                    dst=dst.ctypes.data, res=None if res is None else res.ctypes.data, relu=int(relu))
    if direct and not direct_stride2(stride, n):
        raise ValueError(f"a direct stride-2 step needs stride 2 and a batch of {library().vector_width()} or twice that, "
                         f"not stride {stride}, batch {n}")
    phases = 4 if stride == 2 and not direct else 1  # C: input channels, for the profile (the kernel needs none)
    return Step(kind=CONV_S2 if direct else CONV, src=src.ctypes.data, src_row=src.shape[2] * n * (2 if direct else 1),
                C=src.shape[0] // phases, Ho=ho, Wo=wo, N=n, Cout=cout,
                k=k, stride=stride, pad=pad, H=hin, W=win,
                ngroups=ngroups, ptr=ptr.ctypes.data, chan=chan.ctypes.data, off=off.ctypes.data, off16=int(off.dtype == np.uint16),
                val=val.ctypes.data, bias=bias.ctypes.data, dst=dst.ctypes.data,
                res=None if res is None else res.ctypes.data, relu=int(relu))


def conv_span_eligible(k: int, stride: int, pad: int, hin: int, win: int, ho: int, wo: int) -> bool:
    """Whether a sparse convolution can run as a CONV_SPAN step (``sparse_conv_span_body``): 3x3,
    padding 1, stride 1 (output and input planes share one geometry) or stride 2 over an even
    map (its phase planes laid out in the output's geometry: ``split_step``)."""
    return (k, pad) == (3, 1) and ((stride == 1 and (hin, win) == (ho, wo)) or
                                   (stride == 2 and (hin, win) == (2 * ho, 2 * wo)))


def direct_stride2(stride: int, n: int) -> bool:
    """Whether a stride-2 convolution at batch ``n`` reads its input without phase planes: where
    each pixel is one or two whole vectors of the machine's width (batch 16 or 32 with AVX-512, 8
    or 16 with AVX2)."""
    return stride == 2 and n in (library().vector_width(), 2 * library().vector_width())


# The span step's rows flag: partial sums in a per-thread scratch (``csrc/tiles.h``, ``native_plan.SpanTile``).
SPAN_SUMS = 8
# The CONV_SPAN step's pieces flag: its span rounded up to whole vectors, the last of which reads
# up to a vector less one float past the input's last plane (``csrc/tiles.h``); set only where
# that much memory follows the input (``tail_slack``). 64 bytes: an AVX-512 vector.
SPAN_ROUND = 16
ROUND_SLACK = 64


def tail_slack(a: np.ndarray) -> int:
    """Bytes of memory that follow ``a``'s last element within the object that owns its memory
    (a mapping, bytes, a larger array): what a kernel may read past ``a`` without a fault."""
    owner = a
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    try:
        whole = owner if isinstance(owner, np.ndarray) else np.frombuffer(owner, dtype=np.uint8)
    except (TypeError, ValueError):
        return 0
    end = whole.ctypes.data + whole.nbytes
    return max(0, end - (a.ctypes.data + a.nbytes)) if a.flags.c_contiguous else 0


def span_step(src: np.ndarray, cout: int, ngroups: int, ptr: np.ndarray, chan: np.ndarray, off: np.ndarray,
              val: np.ndarray, bias: np.ndarray, dst: np.ndarray, res: np.ndarray | None, relu: int,
              rows: int = 0) -> Step:
    """The SPAN step: a 1x1 stride-1 unpadded sparse convolution over padded (C, H+2, W+2, N)
    ``src`` as one product over each plane's interior span (``sparse_span_body``); operands as
    ``conv_step``'s with k = 1; ``rows``: pieces of 8 vectors per tile (0: as many as the
    registers hold), plus ``SPAN_SUMS`` for partial sums in a per-thread scratch
    (``native_plan.SpanTile.flag``). Raw addresses: the caller keeps the arrays alive."""
    c, hp, wp, n = src.shape
    return Step(kind=SPAN, src=src.ctypes.data, C=c, H=hp - 2, W=wp - 2, N=n, Cout=cout, ngroups=ngroups,
                ptr=ptr.ctypes.data, chan=chan.ctypes.data, off=off.ctypes.data, off16=int(off.dtype == np.uint16),
                val=val.ctypes.data, bias=bias.ctypes.data, dst=dst.ctypes.data,
                res=None if res is None else res.ctypes.data, relu=int(relu), k=rows)


def gemm_step(src: np.ndarray, w: np.ndarray, bias: np.ndarray, dst: np.ndarray, res: np.ndarray | None,
              relu: int) -> Step:
    """The GEMM step: a dense 1x1 stride-1 unpadded convolution over padded (C, H+2, W+2, N)
    ``src`` as one product over each plane's interior span (``csrc/gemm1x1.c``), with the
    weight packed by ``native_plan.gemm_weights``. Raw addresses: the caller keeps the arrays alive."""
    c, hp, wp, n = src.shape
    return Step(kind=GEMM, src=src.ctypes.data, C=c, H=hp - 2, W=wp - 2, N=n, Cout=dst.shape[0], val=w.ctypes.data,
                bias=bias.ctypes.data, dst=dst.ctypes.data, res=None if res is None else res.ctypes.data,
                relu=int(relu))


def subsample_step(src: np.ndarray, dst: np.ndarray) -> Step:
    """The SUBSAMPLE step: the pixels a 1x1 stride-2 convolution reads, padded (C, H+2, W+2, N)
    ``src`` into padded (C, H/2+2, W/2+2, N) ``dst`` (interior only). Raw addresses: the caller
    keeps the arrays alive."""
    c, hp, wp, n = src.shape
    return Step(kind=SUBSAMPLE, src=src.ctypes.data, C=c, H=hp - 2, W=wp - 2, N=n, dst=dst.ctypes.data)


def conv_pool_step(src: np.ndarray, ho: int, wo: int, cout: int, ngroups: int, ptr: np.ndarray, chan: np.ndarray,
                   off: np.ndarray, val: np.ndarray, bias: np.ndarray, dst: np.ndarray, geometry: tuple[int, int, int, int, int],
                   direct: bool = False) -> Step:
    """The CONV_POOL step: a sparse convolution with ReLU (operands and ``src`` as ``conv_step``'s:
    stride 2 reads phase planes, or with ``direct`` the padded input) followed by the 3x3
    stride-2 max pool, into padded (Cout, ho/2+2, wo/2+2, N) ``dst`` (ho, wo even); the
    convolution's output is never stored. Raw addresses: the caller keeps the arrays alive."""
    if ho % 2 or wo % 2 or dst.shape[1:3] != (ho // 2 + 2, wo // 2 + 2):
        raise ValueError(f"a convolution's {ho}x{wo} output pools into a padded ({ho // 2 + 2}, {wo // 2 + 2}) map "
                         f"only where it is even, not into {tuple(dst.shape)}")
    step = conv_step(src, ho, wo, cout, ngroups, ptr, chan, off, val, bias, dst, None, True, geometry, direct)
    step.kind = CONV_POOL_S2 if direct else CONV_POOL
    return step


def linear_step(src: np.ndarray, weight: np.ndarray, bias: np.ndarray, dst: np.ndarray, relu: int = 0,
                csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> Step:
    """The LINEAR step: (N, C) ``src`` times the (Cout, C) ``weight`` plus ``bias`` into (N, Cout)
    ``dst``, activation code ``relu``; with ``csr`` (row starts, int32 input indices, values:
    ``native_plan.linear_operands``) only the weight's nonzeros are read. Raw addresses: the
    caller keeps the arrays alive."""
    n, c = src.shape
    cout = weight.shape[0]
    arrays = (src, weight, bias, dst)
    if weight.shape != (cout, c) or bias.shape != (cout,) or dst.shape != (n, cout) or \
            any(a.dtype != np.float32 or not a.flags.c_contiguous for a in arrays):
        raise ValueError(f"a linear step takes contiguous float32 ({n}, {c}) inputs, a ({cout}, {c}) weight, {cout} "
                         f"biases and a ({n}, {cout}) output, not {weight.shape}, {bias.shape} and {dst.shape}")
    step = Step(kind=LINEAR, src=src.ctypes.data, N=n, C=c, Cout=cout, val=weight.ctypes.data, bias=bias.ctypes.data,
                dst=dst.ctypes.data, relu=int(relu))
    if csr is not None:
        ptr, idx, val = csr
        if not _valid_csr(ptr, idx, val, cout, c):
            raise ValueError(f"a sparse linear step takes {cout + 1} ascending int32 row starts from 0 to the nonzero "
                             f"count, int32 indices below {c} and float32 values, contiguous")
        step.ptr, step.off, step.val = ptr.ctypes.data, idx.ctypes.data, val.ctypes.data
    return step


def _valid_csr(ptr: np.ndarray, idx: np.ndarray, val: np.ndarray, rows: int, cols: int) -> bool:
    """Whether CSR arrays index only inside themselves and a ``cols``-wide input (the kernel reads
    idx[ptr[k]:ptr[k + 1]] and x[idx[j]] unchecked)."""
    arrays = (ptr, idx, val)
    if any(a.ndim != 1 or not a.flags.c_contiguous for a in arrays) or \
            (ptr.dtype, idx.dtype, val.dtype) != (np.int32, np.int32, np.float32):
        return False
    return (ptr.size == rows + 1 and idx.size == val.size and int(ptr[0]) == 0 and int(ptr[-1]) == idx.size
            and not np.any(np.diff(ptr) < 0) and (idx.size == 0 or 0 <= int(idx.min()) <= int(idx.max()) < cols))


def split_step(src: np.ndarray, dst: np.ndarray) -> Step:
    """The SPLIT step: padded (C, Hp, Wp, N) ``src`` into the 4 phase planes ``dst`` (4C, Hd, Wd,
    N) that a stride-2 convolution reads: Hd, Wd = Hp/2, Wp/2, or one more each for a span
    convolution (``native_plan.phase_dims``), whose extra row and column stay unwritten. Raw
    addresses: the caller keeps the arrays alive."""
    c, hp, wp, n = src.shape
    hd, wd = dst.shape[1:3]
    if hp % 2 or wp % 2 or dst.shape[0] != 4 * c or dst.shape[3] != n or \
            (hd, wd) not in ((hp // 2, wp // 2), (hp // 2 + 1, wp // 2 + 1)):
        raise ValueError(f"phase planes of padded {tuple(src.shape)} are ({4 * c}, {hp // 2}, {wp // 2}, {n}) or a row "
                         f"and column wider, not {tuple(dst.shape)}")
    return Step(kind=SPLIT, src=src.ctypes.data, C=c, H=hp, W=wp, N=n, Ho=hd, Wo=wd, dst=dst.ctypes.data)


def winograd_steps(src: np.ndarray, scratch: np.ndarray | None, u: np.ndarray, bias: np.ndarray, dst: np.ndarray,
                   res: np.ndarray | None, relu: bool) -> list[Step]:
    """One Winograd F(4x4, 3x3) convolution over padded (C, H+2, W+2, N) ``src`` (H, W multiples
    of 4) with the packed transformed weights ``u`` (``sparse._winograd_weights``) into ``dst``:
    with ``scratch`` (at least ``winograd_scratch_floats`` floats), two steps (input transform
    into it, then GEMMs and output transform); without, the fused step (per-panel transform in
    each thread's cache). Raw addresses: the caller keeps the arrays alive."""
    c, hp, wp, n = src.shape
    cout = dst.shape[0]
    if scratch is None:
        return [Step(kind=WG_FUSED, src=src.ctypes.data, C=c, H=hp - 2, W=wp - 2, N=n, Cout=cout, val=u.ctypes.data,
                     bias=bias.ctypes.data, dst=dst.ctypes.data, res=None if res is None else res.ctypes.data,
                     relu=int(relu))]
    return [Step(kind=WG_INPUT, src=src.ctypes.data, C=c, H=hp - 2, W=wp - 2, N=n, dst=scratch.ctypes.data),
            Step(kind=WG_CONV, src=scratch.ctypes.data, C=c, H=hp - 2, W=wp - 2, N=n, Cout=cout, val=u.ctypes.data,
                 bias=bias.ctypes.data, dst=dst.ctypes.data, res=None if res is None else res.ctypes.data,
                 relu=int(relu))]


def cache_dir() -> Path:
    return Path(os.environ.get("CNNPRUNE_CACHE", Path.home() / ".cache" / "cnnprune"))


def _cpu_tag() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def _source_folder() -> Path:
    return Path(str(resources.files("cnnprune") / "csrc"))


@lru_cache(maxsize=1)
def library_key() -> str:
    """What the built library depends on: its sources, the flags and this CPU (16 hex digits)."""
    code = b"".join((_source_folder() / name).read_bytes() for name in SOURCES)
    return hashlib.sha256(code + " ".join(CFLAGS).encode() + _cpu_tag().encode()).hexdigest()[:16]


def _build(cc: str, sources: list[str], out: str, folder: Path) -> None:
    """Each source compiled to an object file, as many at once as this machine has cores, then
    linked into ``out``: the tile instantiations of the sparse convolutions took 39 s of a
    44 s one-file build on the 2-core EPYC, and are split in two files for this."""
    with tempfile.TemporaryDirectory(dir=Path(out).parent) as scratch:
        objects = [str(Path(scratch) / f"{Path(src).stem}.o") for src in sources]
        jobs = [[cc, *CFLAGS, "-c", src, "-o", obj] for src, obj in zip(sources, objects)]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = list(pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True), jobs))
        if all(r.returncode == 0 for r in results):
            results.append(subprocess.run([cc, *CFLAGS, *objects, "-o", out], capture_output=True, text=True))
        for result in results:
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines() or ["no output"]
                first = next((line for line in lines if "error" in line), lines[0])
                raise CnnpruneError(f"compiling {folder} with {cc} failed: {first[:200]}")


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The compiled kernel library (built on first use); one-line error if it cannot be built."""
    folder = _source_folder()
    cc = compiler()
    if cc is None:
        raise CnnpruneError("the sparse CPU engine needs a C compiler with OpenMP (gcc); "
                            "install one (apt-get install gcc) or use a dense engine")
    target = cache_dir() / f"kernels-{library_key()}.so"
    sources = [str(folder / name) for name in SOURCES if name.endswith(".c")]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            _build(cc, sources, tmp, folder)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = None
    lib.channels_per_group.argtypes = [ctypes.c_int] * 6
    lib.channels_per_group.restype = ctypes.c_int
    lib.winograd_scratch_floats.argtypes = [ctypes.c_int] * 4
    lib.winograd_scratch_floats.restype = ctypes.c_int64
    lib.winograd_panels.argtypes = [ctypes.c_int] * 3
    lib.winograd_panels.restype = ctypes.c_int
    lib.vector_width.argtypes = []
    lib.vector_width.restype = ctypes.c_int
    lib.inner_loop_ns.argtypes = [ctypes.c_int] * 5
    lib.inner_loop_ns.restype = ctypes.c_double
    lib.fma_load_ns.argtypes = [ctypes.c_int] * 2
    lib.fma_load_ns.restype = ctypes.c_double
    return lib
