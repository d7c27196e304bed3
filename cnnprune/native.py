"""The native CPU engine: the folded ResNet18 run by the C kernels (``csrc/``), each layer in
the mode calibration found fastest at each batch size (see :mod:`cnnprune.sparse`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnprune.buffers import Arena
from cnnprune.errors import CnnpruneError
from cnnprune.fold import FoldedConv, FoldedResNet, compact_net
from cnnprune.native_plan import (
    FUSED_PANELS_PER_THREAD,
    MODES,
    BufferPool,
    ConvPlan,
    best_ms,
    from_nchw,
    group_size,
    ort_session_of,
    padded,
    paired_ms,
    sparse_operands,
    to_nchw,
    winograd_eligible,
    winograd_weights,
)


class NativeSparseResNet(nn.Module):
    """The folded network executed by the C kernels; see the module docstring."""

    def __init__(self, net: FoldedResNet, threads: int | None = None, calibrate: bool = True,
                 dense_fallback: nn.Module | None = None, winograd: bool = True, layer_mode: str | None = None) -> None:
        super().__init__()
        from cnnprune.kernels import library

        if layer_mode not in (None, "sparse", "winograd"):
            raise CnnpruneError(f"layer_mode {layer_mode!r} is unknown; choose 'sparse', 'winograd' or None (timed per layer)")
        self.lib = library()
        self.net = compact_net(net)
        self.winograd = winograd or layer_mode == "winograd"
        self.layer_mode = layer_mode
        self._fallback = ort_session_of(dense_fallback, threads or torch.get_num_threads()) \
            if dense_fallback is not None and calibrate else None
        self.threads = threads or torch.get_num_threads()
        self.calibrate = calibrate
        self._plans: dict[int, dict] = {}
        self._u: dict[str, np.ndarray] = {}
        self.eval()

    def held_weight_bytes(self) -> int:
        """Bytes of weights this module holds now: the folded weights as kept between plans
        (CSR), biases, fc, and per planned batch size the operands of the chosen modes (sparse
        offsets and values, Winograd's transformed weights, dense weights of dense layers)."""
        arrays: dict[int, int] = {}
        for plan in self._plans.values():
            for p in plan["convs"].values():
                for a in (p.ptr, p.chan, p.off, p.val, p.bias, p.u):
                    if a is not None:
                        arrays[a.ctypes.data] = a.nbytes
                if p.dense_weight is not None:
                    arrays[p.dense_weight.data_ptr()] = p.dense_weight.numel() * 4
        net = self.net
        return (sum(c.weight_bytes() for c in net.convs()) + (net.fc_weight.numel() + net.fc_bias.numel()) * 4
                + sum(arrays.values()))

    def _winograd_u(self, conv: FoldedConv) -> np.ndarray:
        """Transformed weights of a layer, computed once for every batch size that uses them."""
        if conv.name not in self._u:
            self._u[conv.name] = winograd_weights(conv)
        return self._u[conv.name]

    # -- planning
    def _plan(self, n: int) -> dict:
        if n in self._plans:
            return self._plans[n]
        plans: dict[str, ConvPlan] = {}

        def add(conv: FoldedConv, hin: int, win: int) -> tuple[int, int]:
            ho, wo = (hin + 2 * conv.padding - conv.shape[2]) // conv.stride + 1, \
                     (win + 2 * conv.padding - conv.shape[3]) // conv.stride + 1
            p = ConvPlan(conv, hin, win, ho, wo)
            group = group_size(self.lib, conv, wo * n, ho, n)
            p.ptr, p.chan, p.ngroups, p.off, p.val = sparse_operands(conv, hin, win, n, group)
            p.bias = conv.bias.numpy().astype(np.float32)
            if self.winograd and winograd_eligible(conv, hin, win):
                p.u = self._winograd_u(conv)
                p.fused = self.lib.winograd_panels(hin, win, n) >= FUSED_PANELS_PER_THREAD * self.threads
            plans[conv.name] = p
            return ho, wo

        h, w = add(self.net.stem, 32, 32)
        h, w = h // 2, w // 2
        for b in self.net.blocks:
            if b.downsample is not None:
                add(b.downsample, h, w)
            h2, w2 = add(b.conv1, h, w)
            add(b.conv2, h2, w2)
            h, w = h2, w2
        plan = {"convs": plans, "final_hw": (h, w)}
        self._plans[n] = plan
        if self.layer_mode is not None:
            for p in plans.values():
                p.mode = "winograd" if self.layer_mode == "winograd" and p.u is not None else "sparse"
        elif self.calibrate:
            self._choose_layers(n, plan)
        for p in plans.values():
            p.release()
        used = {p.conv.name for q in self._plans.values() for p in q["convs"].values() if p.mode == "winograd"}
        self._u = {k: v for k, v in self._u.items() if k in used}
        return plan

    def _choose_layers(self, n: int, plan: dict, repeats: int = 5) -> None:
        """Per layer, time each way it can run on this batch size (sparse kernel, Winograd where
        the shape allows, PyTorch's dense oneDNN convolution incl. layout conversion), best of
        ``repeats``, and keep the fastest."""
        for p in plan["convs"].values():
            cout, cin = p.conv.shape[:2]
            arena = Arena()  # as the forward pass allocates (huge pages), freed after this layer
            src = padded(cin, p.hin, p.win, n, arena)
            src[:, 1:-1, 1:-1, :] = np.random.default_rng(0).random((cin, p.hin, p.win, n), dtype=np.float32)
            dst = padded(cout, p.ho, p.wo, n, arena)
            phase = arena.zeros((4 * cin, (p.hin + 2) // 2, (p.win + 2) // 2, n)) if p.conv.stride == 2 else None
            scratch = arena.zeros((self._scratch_floats(p, n),)) if p.u is not None and not p.fused else None
            p.dense_weight = p.conv.dense()
            runs = {"sparse": self._native(self._conv_steps(p, "sparse", src, dst, None, True, phase, None), []),
                    "dense": lambda p=p, src=src, dst=dst: self._dense_conv(p, src, dst, None, True)}
            if p.u is not None:
                runs["winograd"] = self._native(self._conv_steps(p, "winograd", src, dst, None, True, None, scratch), [])
            p.ms = {mode: best_ms(fn, repeats) for mode, fn in runs.items()}
            p.mode = min(p.ms, key=p.ms.get)
            del runs, src, dst, phase, scratch

    def _scratch_floats(self, p: ConvPlan, n: int) -> int:
        """Size of a Winograd layer's transformed input (floats); the layers share one buffer."""
        return int(self.lib.winograd_scratch_floats(p.conv.shape[1], p.hin, p.win, n))

    def _choose_engine(self, n: int, plan: dict, rounds: int = 1, margin: float = 0.05) -> None:
        """Whole network: keep the sparse program only if it beats dense onnxruntime at this batch
        by at least ``margin`` (fraction): this decision is what keeps lightly pruned models from
        running slower than dense, so a near tie, which the next minutes of a noisy machine may
        turn either way, goes to dense. Medians over blocks in A B B A order (``paired_ms``)."""
        plan["engine"] = "sparse"
        if self._fallback is None:
            return
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        xn = x.numpy()
        plan["sparse_ms"], plan["dense_ms"] = paired_ms(lambda: self._run_sparse(x),
                                                         lambda: self._fallback.run(None, {"input": xn}), rounds)
        if plan["sparse_ms"] > (1 - margin) * plan["dense_ms"]:
            plan["engine"] = "onnxruntime"

    def engine_for(self, batch_size: int) -> dict:
        """What runs at this batch size ("sparse" or the "onnxruntime" dense fallback) and the timings (ms)."""
        plan = self._program(batch_size)
        return {"engine": plan["engine"], "sparse_ms": plan.get("sparse_ms"), "dense_ms": plan.get("dense_ms")}

    def layer_choice(self, batch_size: int) -> dict[str, dict]:
        """Per layer: how it runs at this batch size ("sparse", "winograd" or "dense"), its
        density (fraction 0-1 of nonzero weights) and the calibration timings (ms) of each
        mode tried (``sparse_ms``, ``winograd_ms``, ``dense_ms``; nan where not timed)."""
        plan = self._plan(batch_size)
        return {name: {"engine": p.mode, "density": p.conv.density,
                       **{f"{mode}_ms": p.ms.get(mode, float("nan")) for mode in MODES}}
                for name, p in plan["convs"].items()}

    # -- execution
    def _dense_conv(self, p: ConvPlan, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None,
                    relu: bool) -> None:
        """One convolution in PyTorch (oneDNN) on this engine's thread count, layout conversion included."""
        previous = torch.get_num_threads()
        if previous != self.threads:
            torch.set_num_threads(self.threads)
        try:
            x = to_nchw(src)
            y = F.conv2d(x, p.dense_weight, p.conv.bias, stride=p.conv.stride, padding=p.conv.padding)
            if res is not None:
                y += to_nchw(res)
            if relu:
                y.relu_()
            from_nchw(y, dst)
        finally:
            if previous != self.threads:
                torch.set_num_threads(previous)

    def _conv_steps(self, p: ConvPlan, mode: str, src: np.ndarray, dst: np.ndarray, res: np.ndarray | None,
                    relu: bool, phase: np.ndarray | None, scratch: np.ndarray | None, split: bool = True) -> list:
        """One convolution as native steps, sparse or Winograd (raw addresses: the plan keeps
        the arrays). Sparse stride 2 reads phase planes, made here unless ``split`` is False
        (already made for this input)."""
        from cnnprune.kernels import conv_step, split_step, winograd_steps

        if mode == "winograd":
            return winograd_steps(src, None if p.fused else scratch, p.u, p.bias, dst, res, relu)
        steps = []
        if p.conv.stride == 2 and split:
            steps.append(split_step(src, phase))
        base = phase if p.conv.stride == 2 else src
        steps.append(conv_step(base, p.ho, p.wo, p.conv.shape[0], p.ngroups, p.ptr, p.chan, p.off, p.val, p.bias,
                               dst, res, relu, p.geometry))
        return steps

    def _native(self, steps: list, keep: list) -> Callable[[], object]:
        """Run consecutive native steps in one call (one parallel region); ``keep`` holds their arrays."""
        from cnnprune.kernels import Step

        array = (Step * len(steps))(*steps)
        lib, t = self.lib, self.threads
        return lambda array=array, keep=keep: lib.run_steps(array, len(array), t)

    def _program(self, n: int) -> dict:
        """Buffers (zero borders, allocated once per batch size from one huge-page ``Arena``,
        each reused once its last reader has run: ``BufferPool``) and the forward pass: runs of
        native steps, each one call, with the layers that run dense (PyTorch) between them."""
        from cnnprune.kernels import AVGPOOL, MAXPOOL, PACK, Step, conv_pool_step

        plan = self._plan(n)
        if "program" in plan:
            return plan
        convs = plan["convs"]
        arena = Arena()
        pool = BufferPool(arena)
        xbuf = arena.zeros((n, 3, 32, 32))
        inp = padded(3, 32, 32, n, arena)
        stem = convs[self.net.stem.name]
        a = pool.padded(64, 32, 32, n) if stem.mode != "sparse" else None  # the fused stem needs none
        cur = pool.padded(64, 16, 16, n)
        keep = [xbuf, inp, a, cur]
        items: list = [Step(kind=PACK, src=xbuf.ctypes.data, N=n, C=3, H=32, W=32, dst=inp.ctypes.data)]

        sizes = [self._scratch_floats(p, n) for p in convs.values() if p.mode == "winograd" and not p.fused]
        scratch = arena.zeros((max(sizes),)) if sizes else None
        keep.append(scratch)

        def conv(p: ConvPlan, src, dst, res, relu, phase, split=True) -> None:
            if p.mode == "dense":
                items.append(lambda: self._dense_conv(p, src, dst, res, relu))
            else:
                items.extend(self._conv_steps(p, p.mode, src, dst, res, relu, phase, scratch, split))

        if stem.mode == "sparse":  # with the pool, in one step: its 32x32 output never goes to memory
            items.append(conv_pool_step(inp, stem.ho, stem.wo, 64, stem.ngroups, stem.ptr, stem.chan, stem.off, stem.val,
                                        stem.bias, cur, stem.geometry))
        else:
            conv(stem, inp, a, None, True, None)
            items.append(Step(kind=MAXPOOL, src=a.ctypes.data, C=64, H=32, W=32, N=n, dst=cur.ctypes.data))
            pool.give(a)
        for b in self.net.blocks:
            p1, p2 = convs[b.conv1.name], convs[b.conv2.name]
            cout, cin = b.conv1.shape[:2]
            phase = None
            if b.conv1.stride == 2:
                phase = pool.phase(cin, cur.shape[1] // 2, cur.shape[2] // 2, n)
            mid = pool.padded(cout, p1.ho, p1.wo, n)
            conv(p1, cur, mid, None, True, phase)
            identity = cur
            if b.downsample is not None:
                pd = convs[b.downsample.name]
                identity = pool.padded(cout, pd.ho, pd.wo, n)
                # the phase planes of ``cur`` were just made by conv1: reuse them
                conv(pd, cur, identity, None, False, phase, split=p1.mode != "sparse")
            out = pool.padded(cout, p2.ho, p2.wo, n)
            conv(p2, mid, out, identity, True, None)
            keep += [phase, mid, identity, out]
            pool.give(phase, mid, cur, identity)
            cur = out
        h, w = plan["final_hw"]
        pooled = arena.zeros((n, cur.shape[0]))
        keep.append(pooled)
        items.append(Step(kind=AVGPOOL, src=cur.ctypes.data, C=cur.shape[0], H=h, W=w, N=n, dst=pooled.ctypes.data))
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
        plan.update(program=program, xbuf=xbuf, pooled=pooled)
        self._choose_engine(n, plan)
        return plan

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for input (N, 3, 32, 32). Not re-entrant: buffers are reused per batch size."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, 32, 32):
            raise CnnpruneError(f"input must be (N, 3, 32, 32), got {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise CnnpruneError("the native sparse engine runs on the CPU; use engine='torch-csr' on CUDA")
        prog = self._program(x.shape[0])
        if prog["engine"] == "onnxruntime":
            return torch.from_numpy(self._fallback.run(None, {"input": x.detach().float().contiguous().numpy()})[0])
        return self._run_sparse(x)

    def _run_sparse(self, x: torch.Tensor) -> torch.Tensor:
        prog = self._plans[x.shape[0]]
        prog["xbuf"][...] = x.detach().float().numpy()
        for part in prog["program"]:
            part()
        return torch.from_numpy(prog["pooled"]) @ self.net.fc_weight.t() + self.net.fc_bias
