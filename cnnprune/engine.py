"""The native CPU engine without torch: the folded ResNet18 run by the C kernels (``csrc/``),
each layer in the mode calibration found fastest at each batch size, on numpy arrays.

Two hosts run it: :mod:`cnnprune.native` (an ``nn.Module`` that adds PyTorch's dense oneDNN
convolution as a third per-layer mode and the whole-network dense fallbacks: onnxruntime, PyTorch
eager, OpenVINO where installed) and :mod:`cnnprune.runtime` (numpy and the kernels only). What a
host adds comes in as callables (``dense_conv``, ``fallbacks``, ``sharing``), so this module imports
neither torch nor onnxruntime. The scheme itself (sparse direct convolution, Winograd, per-layer
calibration) is described in :mod:`cnnprune.sparse`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from cnnprune.buffers import CALIBRATION_CHUNK, Arena, BufferPool, release_free_memory
from cnnprune.errors import CnnpruneError
from cnnprune.fold import INPUT_SIZE, FoldedConv, FoldedResNet, compact_net
from cnnprune.native_plan import (
    FUSED_PANELS_PER_THREAD,
    MODES,
    ONTO_RESIDUAL,
    ConvPlan,
    SpanTile,
    fold_tiles,
    gemm_weights,
    group_size,
    linear_operands,
    padded,
    probes_host_dense,
    random_padded,
    span_operands,
    sparse_linear,
    sparse_operands,
    winograd_eligible,
    winograd_weights,
)
from cnnprune.plancache import PlanCache
from cnnprune.timing import RACE_CLOSE, interleaved_ms, out_after_warm, raced_ms, undecided

# Calibration keeps the sparse kernel unless another mode is faster by more than this fraction:
# Winograd holds 4x the layer's dense weight bytes and oneDNN a dense copy, and differences this
# small flip from one calibration to the next on a shared machine (9 MB of Winograd weights for a
# 17 %-dense layer3 convolution were the runtime's largest single cost at batch 32)
SPARSE_TIE = 0.1
# (plan, src, dst, residual or None, relu) -> a call that runs that convolution densely
DenseConv = Callable[[ConvPlan, np.ndarray, np.ndarray, "np.ndarray | None", bool], Callable[[], object]]
# makes a dense whole-network engine: (N, C, H, W) float32 -> logits. Built when first timed, and
# dropped again while no planned batch size runs it (an onnxruntime session of ResNet-50 holds
# ~100 MB of weights of its own); those a decision makes share, in a ``Sharing`` block, what they
# are made from (the host's dense model and its ONNX export: ``native.DenseSource.shared``)
DenseMaker = Callable[[], Callable[[np.ndarray], np.ndarray]]
Sharing = Callable[[], AbstractContextManager]
# what a plan that runs a dense fallback keeps: the decision and the timings behind it
DECISION_KEYS = ("convs", "engine", "sparse_ms", "dense_ms", "dense_engine")


def runs_sparse(plan: dict) -> bool:
    """Whether a batch size's plan runs the sparse program (not yet decided counts as sparse:
    calibration starts from it), not a dense fallback engine."""
    return plan.get("engine", "sparse") == "sparse"


class NativeEngine:
    """The folded network executed by the C kernels; logits (N, classes) for (N, 3, 32, 32) float32."""

    def __init__(self, net: FoldedResNet, threads: int, calibrate: bool = True, winograd: bool = True,
                 layer_mode: str | None = None, dense_conv: DenseConv | None = None,
                 fallbacks: dict[str, DenseMaker] | None = None, sharing: Sharing | None = None,
                 cache: PlanCache | None = None, recalibrate: bool = False) -> None:
        from cnnprune.kernels import library

        if layer_mode not in (None, "sparse", "winograd", "gemm"):
            raise CnnpruneError(f"layer_mode {layer_mode!r} is unknown; choose 'sparse', 'winograd', 'gemm' or None (timed per layer)")
        self.lib = library()
        self.net = compact_net(net) if net is not None else None  # None: a subclass plans from a graph
        self.input_shape = (3, INPUT_SIZE, INPUT_SIZE)  # (C, H, W) of one input image
        self.threads = threads
        self.calibrate = calibrate
        self.winograd = winograd or layer_mode == "winograd"
        self.gemm = False  # the native dense 1x1 kernel: span convolutions only (GraphEngine)
        self.layer_mode = layer_mode
        self.dense_conv = dense_conv
        self.fallbacks = dict(fallbacks or {}) if calibrate else {}
        self._dense: dict[str, Callable[[np.ndarray], np.ndarray]] = {}  # the fallbacks built now
        self.sharing = sharing or nullcontext
        self.cache = cache
        self.recalibrate = recalibrate  # time afresh and replace the cached plan
        self._plans: dict[int, dict] = {}
        self._u: dict[str, np.ndarray] = {}
        self._g: dict[str, np.ndarray] = {}  # packed GEMM weights, shared like ``_u``

    def modes(self) -> tuple[str, ...]:
        """The ways a layer may run here (a plan cached with other modes is not reused)."""
        return tuple(m for m in MODES if m == "sparse" or (m == "winograd" and self.winograd)
                     or (m == "dense" and self.dense_conv is not None) or (m == "gemm" and self.gemm))

    def _setting(self, n: int) -> str:
        """What a cached plan must have been made under, besides the model and the machine."""
        return f"batch={n}|threads={self.threads}|modes={','.join(self.modes())}|fallback={','.join(self.fallbacks)}"

    def held_weight_bytes(self) -> int:
        """Bytes of weights held now: the folded weights as kept between plans (CSR), biases, fc,
        and per planned batch size the operands of the chosen modes (sparse offsets and values,
        Winograd's transformed weights, dense weights of dense layers)."""
        net = self.net
        return sum(c.weight_bytes() for c in net.convs()) + net.fc_weight.nbytes + net.fc_bias.nbytes + \
            self._operand_bytes()

    def _operand_bytes(self) -> int:
        """Bytes of the operands every planned batch size holds, each array once (Winograd and
        GEMM weights are shared between batch sizes)."""
        arrays: dict[int, int] = {}
        for plan in self._plans.values():
            for p in plan["convs"].values():
                for a in p.operands():
                    if a is not None:
                        arrays[a.ctypes.data if isinstance(a, np.ndarray) else a.data_ptr()] = a.nbytes
        return sum(arrays.values())

    # -- planning
    def _layer_plans(self, n: int) -> dict[str, ConvPlan]:
        """Every convolution's geometry at this batch size (operands come with its mode); conv2,
        its residual's last reader, writes over it (``ConvPlan.onto``)."""
        plans: dict[str, ConvPlan] = {}

        def add(conv: FoldedConv, hin: int, win: int, residual: bool = False) -> tuple[int, int]:
            ho, wo = (hin + 2 * conv.padding - conv.shape[2]) // conv.stride + 1, \
                     (win + 2 * conv.padding - conv.shape[3]) // conv.stride + 1
            p = ConvPlan(conv, hin, win, ho, wo, bias=conv.bias.astype(np.float32), residual=residual, onto=residual and ONTO_RESIDUAL)
            p.winograd_ok = self.winograd and winograd_eligible(conv, hin, win)
            if p.winograd_ok:
                p.fused = self.lib.winograd_panels(hin, win, n) >= FUSED_PANELS_PER_THREAD * self.threads
            plans[conv.name] = p
            return ho, wo

        h, w = add(self.net.stem, INPUT_SIZE, INPUT_SIZE)
        h, w = h // 2, w // 2  # the 3x3 stride-2 max pool
        for b in self.net.blocks:
            if b.downsample is not None:
                add(b.downsample, h, w)
            h, w = add(b.conv1, h, w)
            add(b.conv2, h, w, residual=True)
        return plans

    def _operands(self, p: ConvPlan, n: int, mode: str) -> None:
        """Make what ``mode`` runs on, once: sparse offsets and values, or Winograd's weights
        (the host's dense mode makes its own)."""
        if mode == "sparse" and p.val is None:
            group = group_size(self.lib, p.conv, p.wo * n, p.ho, n, span=p.span, tile=p.span_tile)
            make = (lambda: span_operands(p.conv, group)) if p.span else \
                (lambda: sparse_operands(p.conv, p.hin, p.win, n, group, border=p.border, direct=p.direct,
                                         wide=p.conv_span))
            p.ptr, p.chan, p.ngroups, p.off, p.val = make()
        elif mode == "gemm" and p.g is None:
            if p.conv.name not in self._g:
                self._g[p.conv.name] = gemm_weights(p.conv)
            p.g = self._g[p.conv.name]
        elif mode == "winograd" and p.u is None:
            if p.conv.name not in self._u:
                self._u[p.conv.name] = winograd_weights(p.conv)
            p.u = self._u[p.conv.name]

    def _drop_unused_u(self) -> None:
        """Winograd and GEMM weights are shared by the batch sizes that use them; keep no others."""
        modes = [(p.conv.name, p.mode) for q in self._plans.values() if runs_sparse(q)
                 for p in q["convs"].values()]
        self._u = {k: v for k, v in self._u.items() if (k, "winograd") in modes}
        self._g = {k: v for k, v in self._g.items() if (k, "gemm") in modes}

    def _plan(self, n: int) -> dict:
        if n in self._plans:
            return self._plans[n]
        plans = self._layer_plans(n)
        plan = {"convs": plans}
        self._plans[n] = plan
        reuse = self.cache is not None and self.calibrate and self.layer_mode is None and not self.recalibrate
        cached = self.cache.get(self._setting(n)) if reuse else None
        if self.layer_mode is not None:
            for p in plans.values():
                p.mode = "winograd" if self.layer_mode == "winograd" and p.winograd_ok else \
                    "gemm" if self.layer_mode == "gemm" and p.gemm_ok else "sparse"
        elif cached is not None and cached.fits(plans, self.modes()) and cached.engine in ("sparse", *self.fallbacks):
            cached.apply(plan)
        elif self.calibrate:
            self._choose_layers(n, plan)
        if not runs_sparse(plan):  # a cached decision for a dense fallback
            return plan
        for p in plans.values():
            self._operands(p, n, p.mode)
            p.release()
        self._drop_unused_u()
        return plan

    def _choose_layers(self, n: int, plan: dict, repeats: int = 3) -> None:
        """Per layer, time each way it can run on this batch size (the sparse kernel in each span tiling, Winograd
        and the GEMM where the shape allows, the host's dense convolution incl. layout conversion where
        ``probes_host_dense``; ``raced_ms``) and keep the fastest (near ties: sparse, ``SPARSE_TIE``), dropping
        the others' operands at once; a residual layer is timed with its residual (the span prefetches it), over
        it where it runs so (``ConvPlan.onto``). Each layer's maps reuse the memory of the last's (``rewind``)."""
        arena = Arena(chunk=CALIBRATION_CHUNK, touch=True)  # huge pages as the forward pass has, one map reused
        for p in plan["convs"].values():
            arena.rewind()
            cout, cin = p.conv.shape[:2]
            src = random_padded(cin, p.hin, p.win, n, arena, p.border)
            res = random_padded(cout, p.ho, p.wo, n, arena, seed=1) if p.residual else None
            dst = res if p.onto else padded(cout, p.ho, p.wo, n, arena)
            phase = self._phase(p, n, arena.zeros)
            scratch = arena.zeros((self._scratch_floats(p, n),)) if p.winograd_ok and not p.fused else None
            tiles = self._sparse_runs(p, n, src, dst, res, phase)
            runs = {f"sparse{i}": fn for i, fn in enumerate(tiles.values())}
            if p.gemm_ok:
                self._operands(p, n, "gemm")
                runs["gemm"] = self._native(self._conv_steps(p, "gemm", src, dst, res, True, phase, None), [])
            if p.winograd_ok:
                self._operands(p, n, "winograd")
                runs["winograd"] = self._native(self._conv_steps(p, "winograd", src, dst, res, True, None, scratch), [])
            if self.dense_conv is not None and p.dense_ok and probes_host_dense(p, "gemm" in runs or "winograd" in runs):
                runs["dense"] = self.dense_conv(p, src, dst, res, True)
            p.ms = raced_ms(runs, repeats, RACE_CLOSE)
            best = fold_tiles(p.ms, list(tiles))
            if p.span_tile != best:  # operands of a tiling timed later were made since: remake the fastest's
                p.span_tile, p.val = best, None
                self._operands(p, n, "sparse")
            p.mode = min(p.ms, key=p.ms.get)
            if p.ms["sparse"] <= (1 + SPARSE_TIE) * p.ms[p.mode]:
                p.mode = "sparse"
            del runs, tiles, src, dst, res, phase, scratch
            p.release()
            self._drop_unused_u()

    def _sparse_runs(self, p: ConvPlan, n: int, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None,
                     phase: np.ndarray | None) -> dict[SpanTile | None, Callable[[], object]]:
        """The sparse kernel on this layer once per tiling (``ConvPlan.tilings``), each with its operands."""
        runs = {}
        for tile in p.tilings(n, self.lib.vector_width()):
            p.span_tile, p.val = tile, None
            self._operands(p, n, "sparse")
            runs[tile] = self._native(self._conv_steps(p, "sparse", src, dst, res, True, phase, None),
                                      [p.ptr, p.chan, p.off, p.val])
        return runs

    @staticmethod
    def _phase(p: ConvPlan, n: int, alloc: Callable[[tuple], np.ndarray]) -> np.ndarray | None:
        """What a sparse stride-2 convolution reads, from ``alloc(shape)``: its input subsampled
        (a span convolution: padded (Cin, Ho, Wo, N), border zero) or the 4 phase planes."""
        if p.conv.stride != 2 or p.direct:
            return None
        return alloc((p.conv.shape[1], p.ho + 2, p.wo + 2, n)) if p.span else alloc(p.phase_shape(n))

    def _scratch_floats(self, p: ConvPlan, n: int) -> int:
        """Size of a Winograd layer's transformed input (floats); the layers share one buffer."""
        return int(self.lib.winograd_scratch_floats(p.conv.shape[1], p.hin, p.win, n))

    def _choose_engine(self, n: int, plan: dict, rounds: int = 1, margin: float = 0.05) -> None:
        """Whole network: keep the sparse program only if it beats every dense fallback of the
        host at this batch by at least ``margin`` (fraction), else run the fastest of them: this
        decision is what keeps lightly pruned models from running slower than dense, so a near
        tie, which the next minutes of a noisy machine may turn either way, goes to dense. All
        engines are timed in one palindromic sequence (``interleaved_ms``)."""
        if "engine" in plan:  # from the plan cache
            return
        plan["engine"] = "sparse"
        if not self.fallbacks:
            return
        x = np.random.default_rng(0).standard_normal((n, *self.input_shape), dtype=np.float32)
        names = list(self.fallbacks)
        with self.sharing():
            dense = [self._dense_engine(name) for name in names]
        ms = interleaved_ms([lambda: self._run_sparse(x)] + [lambda f=f: f(x) for f in dense], rounds,
                            still_open=undecided, out_after_warm=out_after_warm)
        best = min(range(len(names)), key=lambda i: ms[i + 1])
        plan.update(sparse_ms=ms[0], dense_ms=ms[best + 1], dense_engine=names[best])
        if ms[0] > (1 - margin) * ms[best + 1]:
            plan["engine"] = names[best]

    def _finish(self, n: int, plan: dict) -> None:
        """After the program is built: the whole-network decision, the plan cache, and where a
        dense fallback won, the sparse program, buffers and operands of this batch size dropped
        (a 50 %-pruned ResNet-50 held 176 MB of operands it never ran)."""
        self._choose_engine(n, plan)
        if self.cache is not None and self.calibrate and self.layer_mode is None:
            self.cache.put(self._setting(n), plan)
        if plan["engine"] != "sparse":
            for key in [k for k in plan if k not in DECISION_KEYS]:
                del plan[key]
            for p in plan["convs"].values():
                p.release(everything=True)
            self._drop_unused_u()
        used = {q.get("engine") for q in self._plans.values()}
        self._dense = {k: f for k, f in self._dense.items() if k in used}
        release_free_memory()

    def _dense_engine(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        if name not in self._dense:
            self._dense[name] = self.fallbacks[name]()
        return self._dense[name]

    def engine_for(self, batch_size: int) -> dict:
        """What runs at this batch size ("sparse" or the name of a dense fallback) and the timings
        (ms) that decided it: the sparse program's and the fastest dense fallback's (``dense_engine``)."""
        plan = self._program(batch_size)
        return {key: plan.get(key) for key in ("engine", "sparse_ms", "dense_ms", "dense_engine")}

    def layer_choice(self, batch_size: int) -> dict[str, dict]:
        """Per layer: how it runs at this batch size ("sparse", "winograd" or "dense"), its
        density (fraction 0-1 of nonzero weights; of a grouped convolution, of its dense
        equivalent, the block diagonal), the span kernel's tiling a 1x1 layer runs or would run
        (``span_tile``, ``SpanTile.label``; empty for other layers and uncalibrated plans) and the
        calibration timings (ms) of each mode tried (``sparse_ms``, ``winograd_ms``, ``dense_ms``;
        nan where not timed; ``sparse_ms`` of the fastest tiling)."""
        plan = self._plan(batch_size)
        return {name: {"engine": p.mode, "density": p.conv.density, "span_tile": p.span_tile.label if p.span_tile else "",
                       **{f"{mode}_ms": p.ms.get(mode, float("nan")) for mode in MODES}}
                for name, p in plan["convs"].items()}

    # -- execution
    def _conv_steps(self, p: ConvPlan, mode: str, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None,
                    relu: bool, phase: np.ndarray | None, scratch: np.ndarray | None, split: bool = True) -> list:
        """One convolution as native steps, sparse or Winograd (raw addresses: the plan keeps
        the arrays). Sparse stride 2 reads phase planes, made here unless ``split`` is False
        (already made for this input)."""
        from cnnprune.kernels import conv_step, gemm_step, span_step, split_step, subsample_step, winograd_steps

        if mode == "winograd":
            return winograd_steps(src, None if p.fused else scratch, p.u, p.bias, dst, res, relu)
        if p.span:
            pre = [subsample_step(src, phase)] if p.conv.stride == 2 else []
            base = phase if p.conv.stride == 2 else src
            if mode == "gemm":
                return pre + [gemm_step(base, p.g, p.bias, dst, res, relu)]
            return pre + [span_step(base, p.conv.shape[0], p.ngroups, p.ptr, p.chan, p.off, p.val, p.bias, dst, res, relu,
                                    rows=p.span_tile.flag if p.span_tile else 0)]
        steps = []
        phased = p.conv.stride == 2 and not p.direct
        if phased and split:
            steps.append(split_step(src, phase))
        steps.append(conv_step(phase if phased else src, p.ho, p.wo, p.conv.shape[0], p.ngroups, p.ptr, p.chan, p.off,
                               p.val, p.bias, dst, res, relu, p.geometry, p.direct, p.pieces))
        return steps

    def _native(self, steps: list, keep: list) -> Callable[[], object]:
        from cnnprune.kernels import StepRun

        return StepRun(self.lib, steps, self.threads, keep)

    def _program(self, n: int) -> dict:
        """Buffers (zero borders, allocated once per batch size from one huge-page ``Arena``,
        each reused once its last reader has run: ``BufferPool``) and the forward pass: runs of
        native steps, each one call, with the layers that run dense (the host's) between them."""
        from cnnprune.kernels import AVGPOOL, MAXPOOL, PACK, Step, conv_pool_step, linear_step

        plan = self._plan(n)
        if "program" in plan or not runs_sparse(plan):
            return plan
        convs = plan["convs"]
        arena = Arena()
        pool = BufferPool(arena)
        s = INPUT_SIZE
        xbuf = arena.zeros((n, 3, s, s))
        inp = padded(3, s, s, n, arena)
        stem = convs[self.net.stem.name]
        a = pool.padded(64, stem.ho, stem.wo, n) if stem.mode != "sparse" else None  # the fused stem needs none
        cur = pool.padded(64, stem.ho // 2, stem.wo // 2, n)
        keep = [xbuf, inp, a, cur]
        items: list = [Step(kind=PACK, src=xbuf.ctypes.data, N=n, C=3, H=s, W=s, dst=inp.ctypes.data)]

        sizes = [self._scratch_floats(p, n) for p in convs.values() if p.mode == "winograd" and not p.fused]
        scratch = arena.zeros((max(sizes),)) if sizes else None
        keep.append(scratch)

        def conv(p: ConvPlan, src, dst, res, relu, phase, split=True) -> None:
            if p.mode == "dense":
                items.append(self.dense_conv(p, src, dst, res, relu))
            else:
                items.extend(self._conv_steps(p, p.mode, src, dst, res, relu, phase, scratch, split))

        if stem.mode == "sparse":  # with the pool, in one step: its 32x32 output never goes to memory
            items.append(conv_pool_step(inp, stem.ho, stem.wo, 64, stem.ngroups, stem.ptr, stem.chan, stem.off, stem.val,
                                        stem.bias, cur, stem.geometry))
        else:
            conv(stem, inp, a, None, True, None)
            items.append(Step(kind=MAXPOOL, src=a.ctypes.data, C=64, H=stem.ho, W=stem.wo, N=n, dst=cur.ctypes.data))
            pool.give(a)
        for b in self.net.blocks:
            p1, p2 = convs[b.conv1.name], convs[b.conv2.name]
            cout, cin = b.conv1.shape[:2]
            phase = pool.phase((4 * cin, cur.shape[1] // 2, cur.shape[2] // 2, n)) if b.conv1.stride == 2 else None
            mid = pool.padded(cout, p1.ho, p1.wo, n)
            conv(p1, cur, mid, None, True, phase)
            identity = cur
            if b.downsample is not None:
                pd = convs[b.downsample.name]
                identity = pool.padded(cout, pd.ho, pd.wo, n)
                conv(pd, cur, identity, None, False, phase, split=p1.mode != "sparse")  # conv1 made cur's phase planes
            out = identity if p2.onto else pool.padded(cout, p2.ho, p2.wo, n)
            conv(p2, mid, out, identity, True, None)
            keep += [phase, mid, identity, out]
            pool.give(phase, mid, *(b for b in (cur, identity) if b is not out))
            cur = out
        pooled = arena.zeros((n, cur.shape[0]))
        fc_w, fc_b = self.net.fc_weight, self.net.fc_bias
        logits = arena.zeros((n, fc_w.shape[0]))
        keep += [pooled, logits, fc_w, fc_b]
        items.append(Step(kind=AVGPOOL, src=cur.ctypes.data, C=cur.shape[0], H=cur.shape[1] - 2, W=cur.shape[2] - 2,
                          N=n, dst=pooled.ctypes.data))
        keep.append(csr := linear_operands(fc_w) if sparse_linear(fc_w, n) else None)
        items.append(linear_step(pooled, fc_w, fc_b, logits, csr=csr))
        plan.update(program=self._group(items, keep), xbuf=xbuf, logits=logits)
        self._finish(n, plan)
        return plan

    def _group(self, items: list, keep: list) -> list[Callable[[], object]]:
        """Consecutive native steps as one call each, host calls between them."""
        from cnnprune.kernels import Step

        program, run = [], []
        for item in items + [None]:
            if isinstance(item, Step):
                run.append(item)
                continue
            if run:
                program.append(self._native(run, keep))
                run = []
            if item is not None:
                program.append(item)
        return program

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for input (N, *input_shape). Not re-entrant: buffers are
        reused per batch size."""
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape) or x.shape[0] < 1:
            c, h, w = self.input_shape
            raise CnnpruneError(f"input must be (N, {c}, {h}, {w}) with N ≥ 1, got {tuple(x.shape)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        engine = self._program(x.shape[0])["engine"]
        if engine != "sparse":
            return self._dense_engine(engine)(x)
        return self._run_sparse(x)

    def _run_sparse(self, x: np.ndarray) -> np.ndarray:
        prog = self._plans[x.shape[0]]
        prog["xbuf"][...] = x
        for part in prog["program"]:
            part()
        return prog["logits"].copy()  # the buffer is the next call's
