"""What one run's ``results.json`` says, as typed records computed once: latencies, speedups,
this run's noise, the sparse engine against its goals, the CUDA run, and each model's figures.

``analyse(results)`` is the only place these are derived; the claims, the markdown, the plots
and the terminal summary all read the same :class:`Analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnprune.archs import DEFAULT_ARCH, ModelSpec
from cnnprune.config import PipelineConfig
from cnnprune.hparams import from_record
from cnnprune.memprobe import RUNTIME as RUNTIME_PROCESS
from cnnprune.schedules import CHECKPOINT_NAMES

DENSE_ENGINES = ("torch", "onnxruntime", "openvino")  # "best dense" = the fastest of those that ran
ENGINE_LABELS = {"torch": "PyTorch eager (dense)", "onnxruntime": "onnxruntime (dense)", "openvino": "OpenVINO (dense, fp32)",
                 "sparse": "cnnprune sparse", "torch-csr": "torch.sparse CSR (naive)"}
CUDA_LABELS = {"torch": "PyTorch eager (dense)", "cuda-graph": "PyTorch CUDA graph (dense)",
               "torch-csr": "torch.sparse CSR (cuSPARSE)", "fp16-cudnn": "cuDNN (dense)",
               "fp16-gemm": "im2col GEMM (dense)", "fp16-2:4": "im2col 2:4 GEMM (cuSPARSELt)",
               "fp16-2:4-cutlass": "im2col 2:4 GEMM (CUTLASS)"}
CUDA_DENSE = ("torch", "cuda-graph")          # fp32 dense engines on the GPU
FP16_DENSE = ("fp16-cudnn", "fp16-gemm")      # fp16 dense engines of the 2:4 comparison
ONE_SHOT = tuple(n for n in CHECKPOINT_NAMES if n.startswith("one_shot"))
ITERATIVE = tuple(n for n in CHECKPOINT_NAMES if n.startswith("iterative"))
# The sparse engine's targets (speedup over the best dense engine, same model, same run), by
# architecture, then target sparsity (percent, as in the model names) and batch size; 1.0 =
# "never slower than dense", the goal of every case not listed (any other architecture,
# sparsity or batch).
SPARSE_GOALS = {
    "resnet18-cifar": {("90", 32): 3.2, ("90", 1): 1.5, ("75", 32): 2.0, ("75", 1): 1.3},
    "resnet50": {("90", 1): 2.5, ("90", 16): 3.8, ("75", 1): 1.6, ("75", 16): 2.4},
    "mobilenet_v2": {("90", 1): 1.3, ("90", 16): 1.8},
}


def _ints(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),)


def _floats(value: Any) -> tuple[float, ...]:
    if value is None:
        return ()
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),)


@dataclass(frozen=True)
class LatencyRow:
    """One benchmark case (model, engine, batch, device), its passes merged; times in ms."""

    model: str
    engine: str
    batch: int
    device: str
    median_ms: float
    iqr_ms: float
    rounds: int
    passes: int = 1
    pass_medians_ms: tuple[float, ...] = ()
    sparse_engine_used: str | None = None
    sparse_engine_passes: tuple[str, ...] = ()  # per pass: what the sparse engine ran (sparse or a dense fallback)
    dense_layers: tuple[int, ...] = ()      # per pass: layers the native engine ran dense
    winograd_layers: tuple[int, ...] = ()   # per pass: layers it ran as Winograd
    sparsity: float | None = None
    graph: bool | str | None = None         # CUDA: replayed from a graph, or why not
    backend: str | None = None              # CUDA 2:4: cusparselt or cutlass
    layers_2_4: int | None = None
    conv_channels: tuple[int, ...] = ()     # sparse engine: convolution output channels in the model, and planned
    first_call_s: tuple[float, ...] = ()    # per pass: the untimed first call (s; the sparse engine calibrates in it)

    @property
    def channels_cut(self) -> bool:
        """The sparse engine took dead channels out of this model (``cnnprune.channels``)."""
        return len(self.conv_channels) == 2 and self.conv_channels[1] < self.conv_channels[0]

    @classmethod
    def of(cls, row: dict) -> LatencyRow:
        return cls(model=row["model"], engine=row["engine"], batch=int(row["batch"]), device=row["device"],
                   median_ms=row["median_ms"], iqr_ms=row["iqr_ms"], rounds=row["rounds"],
                   passes=row.get("passes", 1), pass_medians_ms=tuple(row.get("pass_medians_ms") or ()),
                   sparse_engine_used=row.get("sparse_engine_used"),
                   sparse_engine_passes=tuple(row.get("sparse_engine_passes") or ()), dense_layers=_ints(row.get("dense_layers")),
                   winograd_layers=_ints(row.get("winograd_layers")), sparsity=row.get("sparsity"),
                   graph=row.get("graph"), backend=row.get("semi_structured_backend"),
                   layers_2_4=row.get("layers_2_4"), conv_channels=tuple(row.get("conv_channels") or ()),
                   first_call_s=_floats(row.get("first_call_s")))


@dataclass(frozen=True)
class Ratio:
    """A time ratio (den/num: > 1 = faster) as the median over passes, with its range."""

    median: float
    low: float
    high: float


def paired_ratio(num: LatencyRow, den: LatencyRow) -> Ratio:
    """num/den time ratio as the median over passes of each pass's ratio, with its (min, max):
    within a pass the two were timed seconds apart, so the machine's slow drift cancels. Rows
    with different pass counts fall back to the ratio of pooled medians."""
    a, b = num.pass_medians_ms, den.pass_medians_ms
    if not a or not b or len(a) != len(b):
        r = num.median_ms / den.median_ms
        return Ratio(r, r, r)
    ratios = [x / y for x, y in zip(a, b)]
    return Ratio(float(np.median(ratios)), min(ratios), max(ratios))


def _median(r: Ratio | None) -> float | None:
    return r.median if r else None


@dataclass(frozen=True)
class Speedup:
    """A CPU case against the dense engines: the same model's best, and the unpruned model's."""

    row: LatencyRow
    best_dense_engine: str | None
    vs_best_dense: Ratio | None             # best dense engine, same model
    vs_best_dense_unpruned: Ratio | None    # best dense engine, unpruned model
    vs_same_engine_unpruned: Ratio | None   # this engine, unpruned model: pruning's own share
    flop_limit: float

    @property
    def fraction_of_flop_limit(self) -> float | None:
        s = _median(self.vs_best_dense)
        return s / self.flop_limit if s and self.flop_limit else None


@dataclass(frozen=True)
class GoalCheck:
    """One pruned model against the sparse engine's goal for its sparsity and batch (CPU)."""

    model: str
    batch: int
    goal: float
    speedup: Ratio
    paired: bool          # several passes: the range over passes decides
    within_noise: bool
    flop_limit: float
    met: bool
    pruning_alone: float | None
    sparse_engine_used: str | None
    by_pass: tuple[tuple[str, float], ...] = ()  # per pass: what the sparse engine ran, its speedup

    @property
    def above_flop_limit(self) -> bool:
        return self.goal > self.flop_limit


@dataclass(frozen=True)
class CudaSpeedup:
    """A case of the separate CUDA run against its best dense engine and the dense GEMM."""

    row: LatencyRow
    best_dense_engine: str | None
    vs_best_dense: Ratio | None
    vs_dense_gemm: float | None


@dataclass(frozen=True)
class PairedTest:
    """Exact McNemar test on paired per-image correctness."""

    only_baseline_correct: int
    only_other_correct: int
    p_value: float

    @classmethod
    def of(cls, d: dict | None) -> PairedTest | None:
        return cls(d["only_baseline_correct"], d["only_other_correct"], d["p_value"]) if d else None


@dataclass(frozen=True)
class Memory:
    """A fresh process that loads one form and runs it (bytes)."""

    peak_rss: float
    rss_before_load: float
    rss_after_load: float
    weights_in_memory: float | None
    process: str = ""  # what served the form (memprobe's record; absent in older results)

    @property
    def added_by_load(self) -> float:
        return self.rss_after_load - self.rss_before_load


@dataclass(frozen=True)
class ModelResult:
    """One model's measured figures (accuracy per form as fractions 0–1, sizes in bytes)."""

    name: str
    sparsity: float
    accuracy: dict[str, float]
    max_logit_diff: float
    top1_agreement: float
    files: dict[str, int]
    params_nonzero: int
    params_total: int
    nonzero_macs: float
    dense_macs: float
    flop_limit: float
    memory: dict[str, Memory]   # per form, at the memory step's batch
    vs_unpruned: PairedTest | None
    logit_spread: float | None = None   # largest difference between random inputs' logits (measure.logit_spread)
    logit_scale: float | None = None

    @property
    def input_independent(self) -> bool:
        """Every input gets the same logits (to 1e-6 of their magnitude)."""
        return self.logit_spread is not None and self.logit_spread <= 1e-6 * (self.logit_scale or 0.0)

    @classmethod
    def of(cls, name: str, m: dict) -> ModelResult:
        acc, c = m["accuracy"], m["counts"]
        batch = str(max(int(b) for b in m["memory"]["dense"]))
        mem = {form: Memory(v[batch]["peak_rss"], v[batch]["rss_before_load"], v[batch]["rss_after_load"],
                            v[batch].get("weights_in_memory"), v[batch].get("process", ""))
               for form, v in m["memory"].items()}
        return cls(name=name, sparsity=m["sparsity"], accuracy={f: e["accuracy"] for f, e in acc.items()},
                   max_logit_diff=max((e.get("max_abs_logit_diff_vs_dense", 0.0) for e in acc.values()), default=0.0),
                   top1_agreement=min((e.get("top1_agreement_with_dense", 1.0) for e in acc.values()), default=1.0),
                   files=dict(m["files"]), params_nonzero=c["params_nonzero"], params_total=c["params_total"],
                   nonzero_macs=c["nonzero_macs"], dense_macs=c["dense_macs"], flop_limit=c["flop_limit_speedup"],
                   memory=mem, vs_unpruned=PairedTest.of(m.get("vs_unpruned")),
                   logit_spread=c.get("logit_spread"), logit_scale=c.get("logit_scale"))


@dataclass(frozen=True)
class MethodAccuracy:
    """A pruned model's dense top-1 after one way of pruning: plain (the report's method),
    BN-recalibrated or fine-tuned, with the paired test against the unpruned model."""

    method: str
    model: str
    sparsity: float
    accuracy: float
    vs_unpruned: PairedTest | None


METHOD_LABELS = {"plain": "plain (the report's method)", "recalibrated": "BN-recalibrated", "fine-tuned": "fine-tuned"}


def accuracy_by_method(results: dict, models: dict[str, ModelResult]) -> dict[str, dict[str, MethodAccuracy]]:
    """{method: {model: figures}} for the methods this run made (plain always, where accuracy was measured)."""
    if not results.get("dataset"):
        return {}
    out = {"plain": {m: MethodAccuracy("plain", m, r.sparsity, r.accuracy["dense"], r.vs_unpruned)
                     for m, r in models.items() if m != "unpruned"}}
    recal = results.get("recalibrated_bn")
    if recal:
        out["recalibrated"] = {m: MethodAccuracy("recalibrated", m, e["sparsity"], e["accuracy"],
                                                 PairedTest.of(e.get("vs_unpruned")))
                               for m, e in recal["models"].items()}
    ft = results.get("finetune")
    if ft:
        out["fine-tuned"] = {"iterative_90": MethodAccuracy("fine-tuned", "iterative_90", ft["sparsity"], ft["accuracy"],
                                                            PairedTest.of(ft.get("vs_unpruned")))}
    return out


@dataclass(frozen=True)
class Analysis:
    """Everything the report states, derived once from ``results.json``."""

    results: dict
    config: PipelineConfig
    models: dict[str, ModelResult]
    latency: tuple[LatencyRow, ...]
    speedups: tuple[Speedup, ...]
    noise: dict[tuple[str, int], float]
    goals: tuple[GoalCheck, ...]
    cuda: tuple[CudaSpeedup, ...]
    methods: dict[str, dict[str, MethodAccuracy]]

    @property
    def accuracy_measured(self) -> bool:
        """False for random weights, or a network without test images made for it."""
        return bool(self.results.get("dataset"))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_record(self.results.get("model"))

    @property
    def pruned(self) -> list[str]:
        return [m for m in self.models if m != "unpruned"]

    @property
    def sparse_memory_host(self) -> str:
        """What served the sparse form in the memory step: "runtime" (the torch-free runtime, for
        every model), "sparse.load" (torch-hosted, for every model) or "both" (the runtime where
        the export wrote the network's plan file). Results without the record: the runtime for
        the report's network, ``sparse.load`` for others, as the memory step did then."""
        served = {self.runtime_served(m.memory) for m in self.models.values() if "sparse" in m.memory}
        if not served:
            return "runtime" if self.spec.is_default else "sparse.load"
        return "both" if len(served) == 2 else "runtime" if served.pop() else "sparse.load"

    def runtime_served(self, memory: dict[str, Memory]) -> bool:
        """Whether the torch-free runtime served a model's sparse form in the memory step."""
        process = memory["sparse"].process or (RUNTIME_PROCESS if self.spec.is_default else "")  # no record: as then
        return process == RUNTIME_PROCESS

    @property
    def memory_batch(self) -> int:
        return int(max(int(b) for b in self.results["models"]["unpruned"]["memory"]["dense"]))

    def row(self, device: str, batch: int, model: str, engine: str) -> LatencyRow | None:
        return next((r for r in self.latency if (r.device, r.batch, r.model, r.engine) == (device, batch, model,
                                                                                          engine)), None)


def analyse(results: dict) -> Analysis:
    latency = tuple(LatencyRow.of(r) for r in results["latency"])
    models = {n: ModelResult.of(n, m) for n, m in results["models"].items()}
    noise = noise_floor(latency)
    sp = speedups(latency, models)
    cuda = tuple(cuda_speedups(LatencyRow.of(r) for r in results["cuda"]["latency"])) if results.get("cuda") else ()
    arch = ModelSpec.from_record(results.get("model")).arch
    return Analysis(results=results, config=from_record(PipelineConfig, results.get("config", {})), models=models,
                    latency=latency, speedups=tuple(sp), noise=noise, goals=tuple(sparse_goals(sp, noise, arch)),
                    cuda=cuda, methods=accuracy_by_method(results, models))


def latency_table(rows: tuple[LatencyRow, ...]) -> dict[tuple[str, int], dict[str, dict[str, LatencyRow]]]:
    """{(device, batch): {model: {engine: row}}}."""
    table: dict = {}
    for r in rows:
        table.setdefault((r.device, r.batch), {}).setdefault(r.model, {})[r.engine] = r
    return table


def best_dense(engines: dict[str, LatencyRow], group: tuple[str, ...] = DENSE_ENGINES) -> str | None:
    """The dense engine of ``group`` with the lower pooled median, if any ran."""
    cands = [(e, engines[e].median_ms) for e in group if e in engines]
    return min(cands, key=lambda c: c[1])[0] if cands else None


def speedups(latency: tuple[LatencyRow, ...], models: dict[str, ModelResult]) -> list[Speedup]:
    """Per device, batch, model and engine: speedup over the best dense engine (same model and
    unpruned model) and over the same engine on the unpruned model, as per-pass ratios."""
    out = []
    for (_device, _batch), per_model in sorted(latency_table(latency).items()):
        unpruned = per_model.get("unpruned", {})
        base = best_dense(unpruned)
        for model, engines in per_model.items():
            bd = best_dense(engines)
            for engine, row in engines.items():
                out.append(Speedup(
                    row=row, best_dense_engine=bd,
                    vs_best_dense=paired_ratio(engines[bd], row) if bd else None,
                    vs_best_dense_unpruned=paired_ratio(unpruned[base], row) if base else None,
                    vs_same_engine_unpruned=paired_ratio(unpruned[engine], row) if engine in unpruned else None,
                    flop_limit=models[model].flop_limit))
    return out


def noise_floor(latency: tuple[LatencyRow, ...]) -> dict[tuple[str, int], float]:
    """Per (device, batch): the largest ratio between the two schedules at the same sparsity.

    one_shot_X and iterative_X have the same sparsity and nearly the same masks (the report's
    iterative schedule without fine-tuning), so every engine does the same work for both; the
    largest max/min of their medians, over engines and sparsities, is what the machine's noise
    alone does to a ratio in this run (1.0 = none): the bar a speedup must clear to count.
    """
    out = {}
    for key, per_model in latency_table(latency).items():
        ratios = [max(per_model[a][e].median_ms, per_model[b][e].median_ms)
                  / min(per_model[a][e].median_ms, per_model[b][e].median_ms)
                  for a, b in zip(ONE_SHOT, ITERATIVE) if a in per_model and b in per_model
                  for e in per_model[a] if e in per_model[b]]
        if ratios:
            out[key] = max(ratios)
    return out


def _target(model: str) -> str:
    return model.split("_")[-1]


def sparse_goals(sp: list[Speedup], noise: dict[tuple[str, int], float], arch: str = DEFAULT_ARCH) -> list[GoalCheck]:
    """Each pruned model against the sparse engine's goal for its sparsity and batch (CPU).

    With several passes, a goal of 1.0 ("never slower") is met unless the sparse engine was
    slower in every pass, and a speedup is within noise when its range over passes includes 1;
    with one pass, "never slower" means within the best dense engine's median + IQR and the
    noise is the one-shot vs iterative spread (``noise_floor``).
    """
    dense = {(s.row.batch, s.row.model, s.row.engine): s.row for s in sp if s.row.device == "cpu"}
    out = []
    rows = [s for s in sp if s.row.device == "cpu" and s.row.engine == "sparse" and s.row.model != "unpruned"]
    for s in sorted(rows, key=lambda s: (_target(s.row.model), s.row.batch, s.row.model)):
        goal = SPARSE_GOALS.get(arch, {}).get((_target(s.row.model), s.row.batch), 1.0)
        if s.vs_best_dense is None:
            continue
        r, best = s.vs_best_dense, dense[(s.row.batch, s.row.model, s.best_dense_engine)]
        paired = s.row.passes > 1
        if paired:
            within_noise = r.low <= 1.0 <= r.high
            met = r.high >= 1.0 if goal == 1.0 else r.median >= goal
        else:
            spread = noise.get(("cpu", s.row.batch), 1.0)
            within_noise = 1 / spread < r.median < spread
            met = s.row.median_ms <= best.median_ms + best.iqr_ms if goal == 1.0 else r.median >= goal
        out.append(GoalCheck(model=s.row.model, batch=s.row.batch, goal=goal, speedup=r, paired=paired,
                             within_noise=within_noise, flop_limit=s.flop_limit, met=met,
                             pruning_alone=_median(s.vs_same_engine_unpruned),
                             sparse_engine_used=s.row.sparse_engine_used, by_pass=_by_pass(s.row, best)))
    return out


def _by_pass(sparse: LatencyRow, best: LatencyRow) -> tuple[tuple[str, float], ...]:
    """What the sparse engine ran in each pass and its speedup over the best dense engine in that
    pass (empty where the run did not record it per pass)."""
    ran, a, b = sparse.sparse_engine_passes, sparse.pass_medians_ms, best.pass_medians_ms
    if not ran or not len(ran) == len(a) == len(b):
        return ()
    return tuple((engine, y / x) for engine, x, y in zip(ran, a, b))


def cuda_speedups(rows) -> list[CudaSpeedup]:
    """Per batch, model and engine of the CUDA run: the speedup over the best dense engine of
    that model (fp32: eager or CUDA graph; the fp16 2:4 model: cuDNN or im2col GEMM) and over the
    same-path dense GEMM, as medians of per-pass ratios with range."""
    table: dict = {}
    for r in rows:
        table.setdefault((r.batch, r.model), {})[r.engine] = r
    out = []
    for (_batch, model), engines in sorted(table.items()):
        best = best_dense(engines, FP16_DENSE if model == "semi_2_4" else CUDA_DENSE)
        for row in engines.values():
            gemm = engines.get("fp16-gemm")
            out.append(CudaSpeedup(row=row, best_dense_engine=best,
                                   vs_best_dense=paired_ratio(engines[best], row) if best else None,
                                   vs_dense_gemm=paired_ratio(gemm, row).median if gemm else None))
    return out
