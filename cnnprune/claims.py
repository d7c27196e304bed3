"""The source report's claims as a table of rules: each with its rule text, its threshold, the
measurement that checks it and the verdict computed from that run's figures.

Every threshold is named in :class:`Thresholds`; ``RULES`` is the table, in report order. A rule's
``measure`` reads an :class:`~cnnprune.analysis.Analysis` and returns the measured lines and the
verdict; nothing in a verdict is typed by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cnnprune.analysis import (
    CUDA_DENSE,
    DENSE_ENGINES,
    ENGINE_LABELS,
    ITERATIVE,
    METHOD_LABELS,
    ONE_SHOT,
    Analysis,
    CudaSpeedup,
    Speedup,
)
from cnnprune.fmt import mb, pct, times
from cnnprune.schedules import REPORT_ACCURACY_CIFAR10, REPORT_TEST_IMAGES


@dataclass(frozen=True)
class Thresholds:
    """Every bar a claim must clear, in one place."""

    significant_speedup: float = 1.2   # "speeds up significantly": at least 1.2× faster
    less_memory: float = 0.9           # "less resource usage": peak RSS at most 90 % of unpruned
    much_lighter: float = 0.5          # "a much lighter model": at most half the bytes
    accuracy_kept_pp: float = 1.0      # accuracy "kept": at most 1 percentage point lost
    p_value: float = 0.05              # a paired difference counts below this McNemar p


THRESHOLDS = Thresholds()
# A figure exactly on its bar counts as clearing it; figures derived by float arithmetic (93 % − 92 %
# is 1.0000000000000009 pp) are compared with this much slack.
_SLACK = 1e-9


def at_least(value: float, bar: float) -> bool:
    return value >= bar - _SLACK


def at_most(value: float, bar: float) -> bool:
    return value <= bar + _SLACK


@dataclass(frozen=True)
class Finding:
    """What a rule's measurement found: the lines shown, the verdict, and values its rule text names."""

    measured: list[str]
    verdict: str
    context: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    claim: str
    rule: str                 # format string: {threshold} and the finding's context
    threshold: float
    measure: Callable[[Analysis, float], Finding]


@dataclass(frozen=True)
class Claim:
    """A claim of the source report with the measured figures and the computed verdict."""

    claim: str
    rule: str
    threshold: float
    measured: tuple[str, ...]
    verdict: str


# ------------------------------------------------------------------ 1. speed


def _noise_bar(a: Analysis, threshold: float) -> Callable[[Speedup], float]:
    return lambda s: max(threshold, a.noise.get((s.row.device, s.row.batch), 1.0))


def _low(r) -> float:
    return r.low if r else 0


def _sparse_line(s: Speedup) -> str:
    own, base = s.vs_same_engine_unpruned, s.vs_best_dense_unpruned
    return (f"cnnprune sparse, {s.row.model}, batch {s.row.batch}: {s.row.median_ms:.2f} ms, "
            f"{times(base.median if base else None)} (lowest pass {times(base.low if base else None)}) "
            "vs the best dense engine on the unpruned model "
            f"(FLOP limit {times(s.flop_limit)}; ran: {s.row.sparse_engine_used}"
            + (f"; pruning alone, vs the same engine on the unpruned model: {times(own.median)}, lowest pass "
               f"{times(own.low)}" if own and own.median else "") + ").")


def measure_speed(a: Analysis, threshold: float) -> Finding:
    bar = _noise_bar(a, threshold)
    sp = [s for s in a.speedups if s.row.device == "cpu" and s.row.model != "unpruned"]
    dense_rows = [s for s in sp if s.row.engine in DENSE_ENGINES]
    sparse_rows = [s for s in sp if s.row.engine == "sparse"]
    sparse_wins = [s for s in sparse_rows if at_least(_low(s.vs_best_dense_unpruned), bar(s))
                   and at_least(_low(s.vs_same_engine_unpruned), bar(s))]
    lines = [f"Noise of this run: one-shot and iterative models of the same sparsity cost every engine the same work, "
             f"yet their medians differ by up to {times(r)} at batch {b} ({d}); a speedup counts only above that."
             for (d, b), r in sorted(a.noise.items())]
    best = max(dense_rows, key=lambda s: s.vs_same_engine_unpruned.median if s.vs_same_engine_unpruned else 0,
               default=None)
    if best:
        own = best.vs_same_engine_unpruned
        above = at_least(_low(own), bar(best))
        lines.append(f"Dense engines multiply zeros like any number: the best pruned/unpruned ratio over every dense case "
                     f"is {times(own.median if own else None)} ({best.row.model}, {ENGINE_LABELS[best.row.engine]}, "
                     f"batch {best.row.batch}; lowest pass {times(own.low if own else None)}), "
                     f"{'above' if above else 'not above'} this run's noise in every pass.")
    lines += [_sparse_line(s) for s in sorted(sparse_rows, key=lambda s: (s.row.batch, s.row.model))]
    lines += cuda_findings(a)
    if any(at_least(_low(s.vs_same_engine_unpruned), bar(s)) for s in dense_rows):
        verdict = "holds"
    elif sparse_wins:
        names = sorted({f"{s.row.model} (batch {s.row.batch})" for s in sparse_wins})
        verdict = "holds only for the cnnprune sparse engine: " + ", ".join(names)
        verdict += _constant_note(a, sparse_wins)
    else:
        verdict = "does not hold"
    return Finding(lines, verdict)


def _constant_note(a: Analysis, wins: list[Speedup]) -> str:
    """Which of the models the sparse engine wins on compute a constant, and whether it skipped
    any of their work (dead channels: ``LatencyRow.channels_cut``)."""
    constant = sorted({s.row.model for s in wins if a.models[s.row.model].input_independent})
    if not constant:
        return ""
    cut = sorted({s.row.model for s in wins if s.row.model in constant and s.row.channels_cut})
    if not cut:
        how = "the sparse engine computes them in full (it found no dead channel to take out)"
    elif cut == constant:
        how = "the sparse engine's dead-channel pass skips part of that work"
    else:
        how = f"the sparse engine took dead channels out of {', '.join(cut)}"
    return f"; {', '.join(constant)} compute a constant (their logits do not depend on the input): {how}"


def _span(rows: list[CudaSpeedup], value: Callable[[CudaSpeedup], float]) -> str:
    return f"{min(map(value, rows)):.2f}–{max(map(value, rows)):.2f}×"


def cuda_findings(a: Analysis) -> list[str]:
    """What the CUDA run says about the speed claim, computed from its rows (empty without one)."""
    if not a.cuda:
        return []
    gpu = a.results["cuda"]["machine"].get("gpu") or "GPU"
    lines = []
    dense = [r for r in a.cuda if r.row.engine in CUDA_DENSE and r.row.model != "unpruned"]
    unpruned = {(r.row.batch, r.row.engine): r.row.median_ms for r in a.cuda if r.row.model == "unpruned"}
    ratios = [unpruned[(r.row.batch, r.row.engine)] / r.row.median_ms for r in dense
              if (r.row.batch, r.row.engine) in unpruned]
    if ratios:
        lines.append(f"CUDA ({gpu}, separate run): dense engines run the pruned models at {min(ratios):.2f}–"
                     f"{max(ratios):.2f}× the speed of the unpruned one (zeros cost a GPU the same).")
    csr = [r for r in a.cuda if r.row.engine == "torch-csr" and r.row.model != "unpruned" and r.vs_best_dense]
    if csr:
        best = max(csr, key=lambda r: r.vs_best_dense.median)
        lines.append(f"CUDA ({gpu}): torch.sparse CSR (cuSPARSE) on the report's unstructured masks runs at "
                     f"{min(r.vs_best_dense.median for r in csr):.2f}–{best.vs_best_dense.median:.2f}× the "
                     f"speed of the best dense engine (best case {best.row.model}, batch {best.row.batch}).")
    semi = [r for r in a.cuda if r.row.engine.startswith("fp16-2:4") and r.vs_best_dense]
    if semi:
        lines.append(f"CUDA ({gpu}): 2:4 semi-structured sparsity (beyond the report, fp16) runs at "
                     f"{_span(semi, lambda r: r.vs_best_dense.median)} the speed of the best fp16 dense engine "
                     f"and {_span(semi, lambda r: r.vs_dense_gemm)} that of the same im2col GEMM with dense "
                     "weights.")
    return lines


# ------------------------------------------------------------------ 2. resources and 3. size


def _weights_verdict(a: Analysis) -> str:
    wd = a.models["unpruned"].memory["dense"].weights_in_memory
    ratios = {m: a.models[m].memory["sparse"].weights_in_memory / wd for m in a.pruned
              if wd and "sparse" in a.models[m].memory and a.models[m].memory["sparse"].weights_in_memory}
    verdict = "does not hold for the process as a whole (runtime libraries dominate peak RSS)"
    fewer = [m for m, r in ratios.items() if r < 1]
    if not ratios:
        return verdict
    span = f"{min(ratios.values()):.2f}–{max(ratios.values()):.2f}× of dense"
    if len(fewer) == len(ratios):
        return verdict + f"; the weights held shrink only in the sparse form ({span})"
    if fewer:
        return verdict + (f"; the sparse form holds fewer weight bytes than dense only for {', '.join(fewer)} "
                          f"({span}: Winograd layers hold transformed weights, 4× their dense size)")
    return verdict + f"; the sparse form holds no fewer weight bytes than dense ({span})"


DENSE_PROCESSES = {"dense": "PyTorch", "onnx": "onnxruntime"}


def _smallest_dense(mem: dict) -> tuple[str, float]:
    """The dense form whose process peaked lowest (its name and peak RSS): what a user serving the
    dense model would run."""
    form = min((f for f in DENSE_PROCESSES if f in mem), key=lambda f: mem[f].peak_rss)
    return form, mem[form].peak_rss


def measure_resources(a: Analysis, threshold: float) -> Finding:
    lines, dense_less, sparse_less = [], [], []
    base_form, base = _smallest_dense(a.models["unpruned"].memory)
    lines.append(f"unpruned: the smallest dense process peaks at {mb(base)} ({DENSE_PROCESSES[base_form]} alone); "
                 "every ratio below is against it.")
    for m in a.pruned:
        mem = a.models[m].memory
        form, peak = _smallest_dense(mem)
        d = peak / base
        dense_text = f"{m}: peak RSS dense {mb(peak)} ({DENSE_PROCESSES[form]} alone, {times(d)})"
        if "sparse" not in mem:  # the sparse engine does not run this network
            lines.append(dense_text + "; sparse form not measured in this run.")
            dense_less += [m] if at_most(d, threshold) else []
            continue
        s = mem["sparse"].peak_rss / base
        host = "cnnprune.runtime alone" if a.runtime_served(mem) else "cnnprune.sparse.load: torch, the kernels, onnxruntime"
        lines.append(dense_text + f", sparse {mb(mem['sparse'].peak_rss)} ({host}, {times(s)}); "
                     f"weights in memory sparse {mb(mem['sparse'].weights_in_memory)} vs dense "
                     f"{mb(a.models['unpruned'].memory['dense'].weights_in_memory)}.")
        if at_most(d, threshold):
            dense_less.append(m)
        if at_most(s, threshold):
            sparse_less.append(m)
    if dense_less:
        verdict = "holds"
    elif sparse_less:
        verdict = "holds only for the cnnprune sparse form: " + ", ".join(sparse_less)
    else:
        verdict = _weights_verdict(a)
    return Finding(lines, verdict, {"runs": a.results["memory_runs"], "batch": a.memory_batch})


def measure_size(a: Analysis, threshold: float) -> Finding:
    lines, light = [], {}
    dense = a.models["unpruned"].files["dense"]
    for m in a.pruned:
        f = a.models[m].files
        ratios = {k: f[k] / dense for k in f}
        lines.append(f"{m}: " + ", ".join(f"{k} {mb(f[k])} ({times(ratios[k])})" for k in f)
                     + f"; nonzero parameters {a.models[m].params_nonzero:,} of {a.models[m].params_total:,}.")
        for k, r in ratios.items():
            if at_most(r, threshold):
                light.setdefault(k, []).append(m)
    if "dense" in light or "onnx" in light:
        verdict = "holds"
    elif light:
        verdict = "holds only for the compact sparse file (csr): " + ", ".join(light["csr"])
    else:
        verdict = "does not hold"
    return Finding(lines, verdict)


# ------------------------------------------------------------------ 4–6. accuracy


def not_measured_reason(a: Analysis) -> str:
    """Why a run has no accuracy: untrained weights, or no test images made for its network."""
    spec = a.spec
    if str(a.results.get("weights", "")).startswith("random"):
        return (f"not measured: the weights are {a.results['weights']}, untrained. Global magnitude pruning of "
                "untrained weights spreads sparsity over the layers differently from trained ones (an initialisation "
                "scales each layer by its fan-in), so the per-layer sparsities and speedups of this run are not those "
                "of a trained model either.")
    return (f"not measured: no test images made for {spec.arch} at {spec.input_size}×{spec.input_size}; give "
            "--dataset imagefolder --data-dir DIR (one folder per class).")


def _needs_accuracy(measure: Callable[[Analysis, float], Finding]) -> Callable[[Analysis, float], Finding]:
    def checked(a: Analysis, threshold: float) -> Finding:
        if not a.accuracy_measured:
            return Finding([not_measured_reason(a)], "not measured")
        return measure(a, threshold)
    return checked


def _dense_accuracy(a: Analysis) -> dict[str, float]:
    return {m: r.accuracy["dense"] for m, r in a.models.items()}


def accuracy_kept(a: Analysis, method: str, threshold: float) -> tuple[list[str], list[str]]:
    """(kept, lost): the models of ``method`` within ``threshold`` pp of the unpruned model, and the others."""
    base = a.models["unpruned"].accuracy["dense"]
    rows = a.methods.get(method, {})
    kept = [m for m, r in rows.items() if at_most(100 * (base - r.accuracy), threshold)]
    return kept, [m for m in rows if m not in kept]


def _method_line(a: Analysis, method: str, threshold: float) -> str:
    kept, lost = accuracy_kept(a, method, threshold)
    rows = a.methods[method]
    if method == "recalibrated":
        how = f"BatchNorm statistics re-estimated from {a.results['recalibrated_bn']['images']:,} training images"
    else:
        how = f"{a.results['finetune']['epochs_per_step']} epoch(s) of masked fine-tuning after each iterative step"
    figures = ", ".join(f"{m} {pct(r.accuracy)}" for m, r in rows.items())
    return (f"{METHOD_LABELS[method]} ({how}; beyond the report): {figures}; kept for {', '.join(kept) or 'none'}"
            + (f"; not for {', '.join(lost)}" if lost else ""))


def measure_accuracy(a: Analysis, threshold: float) -> Finding:
    acc = _dense_accuracy(a)
    lines = [f"{m}: {pct(acc[m])} measured ({a.results['dataset']}, {a.results['test_images']:,} images), "
             f"Δ {100 * (acc[m] - acc['unpruned']):+.2f} pp; report {REPORT_ACCURACY_CIFAR10[m]:.3f}% "
             f"(CIFAR-10, k/{REPORT_TEST_IMAGES})" for m in a.models]
    drops = {m: 100 * (acc["unpruned"] - acc[m]) for m in a.pruned}
    kept = [m for m in a.pruned if at_most(drops[m], threshold)]
    lost = [m for m in a.pruned if m not in kept]
    verdict = "holds" if not lost else f"holds only for {', '.join(kept) or 'none'}; not for {', '.join(lost)}"
    lines += [_method_line(a, method, threshold) for method in ("recalibrated", "fine-tuned") if method in a.methods]
    return Finding(lines, verdict)


def measure_schedules(a: Analysis, threshold: float) -> Finding:
    acc = _dense_accuracy(a)
    agree = a.results.get("mask_agreement_one_shot_vs_iterative", {})
    lines, differ = [], []
    for one, it in zip(ONE_SHOT, ITERATIVE):
        if one in acc and it in acc:
            t = one.split("_")[-1]
            test = a.results.get("one_shot_vs_iterative", {}).get(t, {}).get("p_value", float("nan"))
            lines.append(f"{t}%: iterative {pct(acc[it])} vs one-shot {pct(acc[one])} "
                         f"(Δ {100 * (acc[it] - acc[one]):+.2f} pp, McNemar p = {test:.2f}); masks identical on "
                         f"{pct(agree.get(t, float('nan')))} of weights")
            if test < threshold:
                differ.append(t)
    verdict = ("no measurable difference: without fine-tuning between steps, iterative pruning is one-shot "
               "pruning up to rounding" if not differ else f"differs at {', '.join(differ)} %")
    ft = a.results.get("finetune")
    if ft:
        lines.append(f"with {ft['epochs_per_step']} epoch(s) of fine-tuning after each step (beyond the report): "
                     f"iterative_90 {pct(ft['accuracy'])} at sparsity {pct(ft['sparsity'])} vs "
                     f"{pct(acc.get('iterative_90', float('nan')))} without")
    return Finding(lines, verdict)


def measure_generalisation(a: Analysis, threshold: float) -> Finding:
    lines, better = [], []
    for m in a.pruned:
        t = a.models[m].vs_unpruned
        lines.append(f"{m}: {t.only_other_correct} images right only after pruning, "
                     f"{t.only_baseline_correct} only before; McNemar p = {t.p_value:.3f}")
        if t.only_other_correct > t.only_baseline_correct and t.p_value < threshold:
            better.append(m)
    r = REPORT_ACCURACY_CIFAR10
    lines.append(f"the report's own evidence: {r['one_shot_50']}% vs {r['unpruned']}% = "
                 f"{round((r['one_shot_50'] - r['unpruned']) / 100 * REPORT_TEST_IMAGES)} "
                 f"more correct images out of {REPORT_TEST_IMAGES:,}")
    verdict = "holds for " + ", ".join(better) if better else "does not hold (no significant gain)"
    return Finding(lines, verdict)


# ------------------------------------------------------------------ the table

T = THRESHOLDS
RULES: tuple[Rule, ...] = (
    Rule("pruning \"speeds up the model significantly\"",
         "significant = at least {threshold}× faster than the best dense engine running the unpruned model (median "
         "latency, CPU, same threads), and more than the run's noise spread, in every pass (the lowest per-pass "
         "ratio clears the bar); for the cnnprune engine also against itself running the unpruned model, since "
         "its Winograd layers speed that up too", T.significant_speedup, measure_speed),
    Rule("pruning gives \"less resource usage\"",
         "less = peak RSS of a fresh process serving one form alone (load + {runs} inferences at batch {batch}) at "
         "most {threshold:.0%} of the unpruned model's smallest dense process", T.less_memory, measure_resources),
    Rule("pruning gives \"a much lighter model\"",
         "much lighter = file at most {threshold:.0%} of the unpruned dense .pth; a dense file of a pruned model "
         "stores its zeros", T.much_lighter, measure_size),
    Rule(f"the accuracy table: pruning to 50/75/90 % keeps accuracy (report: {REPORT_ACCURACY_CIFAR10['unpruned']}% "
         f"unpruned, {REPORT_ACCURACY_CIFAR10['one_shot_90']}% at 90 % one-shot)",
         "kept = at most {threshold} pp below the unpruned model, same dataset, all test images",
         T.accuracy_kept_pp, _needs_accuracy(measure_accuracy)),
    Rule("\"iterative vs one-shot\": the two schedules compared",
         "difference = exact McNemar test on paired per-image correctness, p < {threshold}", T.p_value,
         _needs_accuracy(measure_schedules)),
    Rule("\"pruning improves generalisation\"",
         "improves = more test images right after pruning than before, exact McNemar p < {threshold}", T.p_value,
         _needs_accuracy(measure_generalisation)),
)


def claims(a: Analysis, rules: tuple[Rule, ...] = RULES) -> list[Claim]:
    """Each rule of the table applied to one run."""
    out = []
    for rule in rules:
        found = rule.measure(a, rule.threshold)
        out.append(Claim(claim=rule.claim, rule=rule.rule.format(threshold=rule.threshold, **found.context),
                         threshold=rule.threshold, measured=tuple(found.measured), verdict=found.verdict))
    return out
