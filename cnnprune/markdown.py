"""``REPORT.md``: one run's :class:`~cnnprune.analysis.Analysis` rendered section by section.

Every figure is read from the analysis of ``results.json``; every verdict comes from
:mod:`cnnprune.claims`. Each function below renders one section and returns its lines.
"""

from __future__ import annotations

from pathlib import Path

from cnnprune.analysis import ENGINE_LABELS, METHOD_LABELS, Analysis, GoalCheck, LatencyRow, MethodAccuracy
from cnnprune.archs import DEFAULT_ARCH
from cnnprune.claims import THRESHOLDS, accuracy_kept, claims, not_measured_reason
from cnnprune.fmt import mb, pct, times
from cnnprune.markdown_cuda import cuda_section
from cnnprune.schedules import REPORT_ACCURACY_CIFAR10, REPORT_TEST_IMAGES

LATENCY_ENGINES = ("torch", "onnxruntime", "openvino", "sparse", "torch-csr")
MEMORY_RUNTIME = "`cnnprune.runtime` alone (numpy and the native kernels; neither torch nor onnxruntime imported)"
MEMORY_GRAPH = "`cnnprune.sparse.load` (torch, the kernels, the {}: some op of the network runs in PyTorch)"
MEMORY_BOTH = ("`cnnprune.runtime` alone on the network's plan (`NAME.graph.safetensors`) where the export wrote one, "
               "else `cnnprune.sparse.load` (torch, the kernels, the {})")
PLAN_DEFAULT, PLAN_GRAPH = "BatchNorm folded, native sparse direct convolution", (
    "planned from the traced graph: BatchNorm folded, activations and residual adds fused, 1×1 convolutions as sparse × dense "
    "products over each map or, where faster, a native dense 1×1 GEMM, ops without a kernel in PyTorch between native segments")


def _fallback_passes(used: str | None) -> str:
    """"all" when the sparse engine ran a dense fallback in every pass, "some" when in some
    ("onnxruntime+sparse", as the passes are joined), else ""."""
    ran = set((used or "").split("+")) - {""}
    return "" if not ran - {"sparse"} else "some" if "sparse" in ran else "all"


def _fallback_names(a: Analysis) -> list[str]:
    """The sparse engine's whole-network dense fallbacks in this run (onnxruntime alone before they were recorded)."""
    return a.results["machine"].get("sparse_fallbacks") or ["onnxruntime"]


def _fallbacks(a: Analysis) -> str:
    names = _fallback_names(a)
    return f"{names[0]} fallback" if len(names) == 1 else f"fallback to the fastest of {', '.join(names)}"


def _layer_counts(values: tuple[int, ...]) -> str:
    """A per-pass layer count as "k" or "k1–k2" where passes chose differently ("" for none)."""
    lo, hi = min(values, default=0), max(values, default=0)
    return "" if hi == 0 else (f"{lo}" if lo == hi else f"{lo}–{hi}")


def _layer_marks(row: LatencyRow) -> str:
    """Latency-cell marks of the layers the native engine ran otherwise than sparse: "Wk"
    Winograd, "‡k" dense oneDNN."""
    marks = []
    if _layer_counts(row.winograd_layers):
        marks.append(f"W{_layer_counts(row.winograd_layers)}")
    if _layer_counts(row.dense_layers):
        marks.append(f"‡{_layer_counts(row.dense_layers)}")
    return (" " + " ".join(marks)) if marks else ""


def how_measured(a: Analysis) -> list[str]:
    r, m = a.results, a.results["machine"]
    cuda_gpu = r["cuda"]["machine"].get("gpu") if r.get("cuda") else None
    L = ["## How it was measured\n",
         f"- Machine: {m['cpu']}" + (f" ({m['cpu_detail']})" if m.get("cpu_detail") else "")
         + f", {m['logical_cpus']} logical CPUs; **{m['threads']} threads for every engine**; "
         f"GPU: {m['gpu'] or 'none (CUDA cases skipped)'}"
         + (f"; the CUDA figures come from a separate run on {cuda_gpu} (section CUDA)." if r.get("cuda") else "."),
         f"- Software: Python {m['python']}, PyTorch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, "
         f"NumPy {m['numpy']}" + (f", OpenVINO {m['openvino']} (fp32 precision hint)" if m.get("openvino") else "")
         + f"; {m['platform']}.",
         _model_line(a), _data_line(a)]
    rounds = sorted({row.rounds for row in a.latency})
    passes = max((row.passes for row in a.latency), default=1)
    L.append(f"- Latency: pytest-benchmark, one forward pass per round on a fixed random input, "
             f"{'/'.join(map(str, rounds))} timed rounds in all after ≥2 warm-up rounds and one untimed first call "
             "(planning, calibration); reported as **median (IQR)** in ms over all rounds. Batch sizes "
             f"{', '.join(map(str, a.config.batches))}. Compare ratios within this run only.")
    if passes > 1:
        L.append(f"- Passes: the matrix ran {passes} times, every engine loaded afresh each time (the sparse engine "
                 "calibrates again); within a pass the engines of one model and batch ran back to back, seconds "
                 "apart. A speedup is the **median of the per-pass ratios** (so the machine's slow drift cancels); "
                 "the goals table gives its range over passes.")
    if a.noise:
        L.append("- Noise: one-shot and iterative models of the same sparsity cost every engine the same work; their "
                 "medians differ by up to " + ", ".join(f"{times(v)} at batch {b} ({d})"
                                                        for (d, b), v in sorted(a.noise.items()))
                 + " in this run. Ratios closer to 1 than that are not resolved by this run.")
    L.append(f"- Memory: peak RSS (VmHWM) of a fresh Python process that serves one form with the least it needs "
             f"and runs {r['memory_runs']} inferences at batch {max(a.config.batches)}: dense = PyTorch alone, onnx = "
             "onnxruntime alone, sparse = " + {"runtime": MEMORY_RUNTIME, "sparse.load": MEMORY_GRAPH,
                                              "both": MEMORY_BOTH}[a.sparse_memory_host].format(_fallbacks(a))
             + ". Weights in memory are the bytes of the loaded weights (ONNX: its initializers).")
    L.append("- Forms: `dense` = permanent state_dict in PyTorch eager; `onnx` = onnxruntime CPU; `sparse` = "
             f"`cnnprune.sparse.load` ({PLAN_DEFAULT if a.spec.is_default else PLAN_GRAPH}"
             f", per-layer choice of sparse, Winograd or dense oneDNN by timing, dense {_fallbacks(a)} unless the "
             "whole sparse net is at least 5 % faster" + ("; in the memory step the same plan and kernels in "
                                                          "`cnnprune.runtime`, without oneDNN or the fallback"
                                                          if a.sparse_memory_host != "sparse.load" else "")
             + "); `torch-csr` = naive `torch.sparse` CSR × im2col.\n")
    return L


def _model_line(a: Analysis) -> str:
    r, spec = a.results, a.spec
    source = (f"checkpoint `{Path(r['source_checkpoint']['path']).name}` (sha256 "
              f"`{r['source_checkpoint']['sha256'][:16]}…`)")
    if spec.is_default and spec.num_classes == 10:
        return f"- Model: the report's CIFAR ResNet18 (3×3 stride-1 conv1, maxpool kept, 11,173,962 parameters), {source}."
    weights = r.get("weights", "checkpoint")
    return (f"- Model: {'the CIFAR ResNet18' if spec.arch == DEFAULT_ARCH else 'torchvision’s ' + spec.arch}, "
            f"{spec.num_classes} classes, {spec.input_size}×{spec.input_size} input, "
            f"{a.models['unpruned'].params_total:,} parameters; "
            + (f"weights: {weights}, no checkpoint." if weights.startswith("random") else f"{source}."))


def _data_line(a: Analysis) -> str:
    r = a.results
    if not a.accuracy_measured:
        return f"- Data: accuracy {not_measured_reason(a)}"
    return (f"- Data: {r['dataset']}, accuracy on **all {r['test_images']:,} test images** "
            f"(the report used CIFAR-10 and {REPORT_TEST_IMAGES:,} of its 10,000 test images; its numbers are quoted, "
            "never mixed with ours).")


def claims_section(a: Analysis) -> list[str]:
    L = ["## The report's claims\n"]
    for c in claims(a):
        L += [f"### {c.claim}\n", f"**Verdict: {c.verdict}.**  \n_Rule: {c.rule}._\n"]
        L += [f"- {line}" for line in c.measured]
        L.append("")
    return L


def _sparse_cell(row: LatencyRow) -> str:
    cell = f"{row.median_ms:.2f} ({row.iqr_ms:.2f})"
    fallback = _fallback_passes(row.sparse_engine_used)
    if fallback:
        return cell + (" †" if fallback == "all" else " (†)")
    return cell + _layer_marks(row)


def _latency_table(a: Analysis, device: str, batch: int) -> list[str]:
    rows = {(s.row.model, s.row.engine): s for s in a.speedups if (s.row.device, s.row.batch) == (device, batch)}
    engines = [e for e in LATENCY_ENGINES if any(k[1] == e for k in rows)]
    L = [f"### {device}, batch {batch}\n",
         "| model | sparsity | " + " | ".join(f"{ENGINE_LABELS[e]} ms" for e in engines)
         + " | sparse speedup vs best dense | of FLOP limit | sparse: unpruned / pruned |",
         "|---|---:|" + "---:|" * len(engines) + "---:|---:|---:|"]
    for model, result in a.models.items():
        cells = []
        for e in engines:
            s = rows.get((model, e))
            cells.append("–" if s is None else _sparse_cell(s.row) if e == "sparse"
                         else f"{s.row.median_ms:.2f} ({s.row.iqr_ms:.2f})")
        s = rows.get((model, "sparse"))
        speed = times(s.vs_best_dense.median if s and s.vs_best_dense else None) if s else "–"
        frac = f"{s.fraction_of_flop_limit:.0%} of {times(s.flop_limit)}" if s and s.fraction_of_flop_limit else "–"
        own = s.vs_same_engine_unpruned if s else None
        own_cell = times(own.median) if own and model != "unpruned" and own.median else "–"
        L.append(f"| {model} | {pct(result.sparsity)} | " + " | ".join(cells) + f" | {speed} | {frac} | {own_cell} |")
    L.append("")
    return L


def _fallback_ran(a: Analysis) -> str:
    """What the † of the latency tables says the sparse engine ran instead of its sparse path."""
    names = _fallback_names(a)
    if len(names) == 1:
        return f"slower than dense {names[0]} at this batch size and ran {names[0]}"
    return (f"slower than the fastest of {', '.join(names)} at this batch size and ran that engine (which one: "
            "the claims' \"ran\" lists)")


LATENCY_NOTE = (
    "Speedup vs best dense = the fastest dense engine of the table (PyTorch eager, onnxruntime and, where installed, "
    "OpenVINO) on the same model, same run, same threads, "
    "divided by the sparse engine's time (per pass, median over passes). FLOP limit = dense MACs / nonzero MACs, "
    "both counting the products with the zero border that dense engines compute. † = the sparse engine measured its "
    "sparse path {ran}; (†) = in some passes; Wk = k "
    "of its convolutions ran Winograd F(4x4, 3x3), ‡k = k ran dense oneDNN, because that was faster (k1–k2: "
    "passes chose differently). Winograd is a dense algorithm (4x fewer multiplies than a direct convolution, for "
    "the densest layers): it can take the speedup past 100 % of the FLOP limit, and it speeds up the unpruned model "
    "too; so can the sparse kernel's skipping of the taps that read only the zero border (most of layer4's at its "
    "2x2 maps). Pruning's own share is the last column: the same engine's time on the unpruned model over its time "
    "on this one.\n")


def _goal_verdict(g: GoalCheck) -> str:
    verdict = "met" if g.met else "not met"
    if g.above_flop_limit:
        verdict += " (the goal is above this model's FLOP limit)"
    if g.within_noise:
        verdict += "; the difference is within this run's noise"
    fallback = _fallback_passes(g.sparse_engine_used)
    if fallback:
        verdict += "; ran the dense fallback" + ("" if fallback == "all" else " in some passes")
    if g.by_pass and (fallback == "some" or not g.met):
        verdict += " (by pass: " + ", ".join(f"{times(r)} {engine}" for engine, r in g.by_pass) + ")"
    return verdict


def goals_section(a: Analysis) -> list[str]:
    if not a.goals:
        return []
    L = ["### The sparse engine against its goals\n",
         "| model | batch | goal vs best dense | measured | FLOP limit | pruning alone | verdict |",
         "|---|---:|---:|---:|---:|---:|---|"]
    for g in a.goals:
        spread = f" ({g.speedup.low:.2f}–{g.speedup.high:.2f})" if g.paired else ""
        L.append(f"| {g.model} | {g.batch} | {'never slower' if g.goal == 1.0 else times(g.goal)} | "
                 f"{times(g.speedup.median)}{spread} | {times(g.flop_limit)} | {times(g.pruning_alone)} | "
                 f"{_goal_verdict(g)} |")
    L.append("\nPruning alone = the same engine's time on the unpruned model over its time on this model: "
             "what the pruning itself buys inside the engine, Winograd and kernels being equal.")
    if any(g.paired for g in a.goals):
        L.append("Measured = median of the per-pass ratios (range over passes). \"Never slower\" = not slower in "
                 "every pass; \"within noise\" = the range over passes includes 1.\n")
    else:
        L.append("\n\"Never slower\" = the sparse median is within the best dense engine's median + IQR of this run.\n")
    return L


def latency_section(a: Analysis) -> list[str]:
    L = ["## Latency\n"]
    for device, batch in sorted({(s.row.device, s.row.batch) for s in a.speedups}):
        L += _latency_table(a, device, batch)
    if not any(s.row.engine == "sparse" for s in a.speedups):
        from cnnprune.sparse import unsupported

        L.append(f"Sparse engine: not run ({unsupported(a.spec) or 'not in this run'}); its columns are empty. "
                 "The dense engines' pruned / unpruned ratios still answer whether pruning alone speeds them up.\n")
    return L + [LATENCY_NOTE.format(ran=_fallback_ran(a))] + first_calls(a) + dead_paths(a) + goals_section(a)


def first_calls(a: Analysis) -> list[str]:
    """How long each CPU engine's untimed first call took, per batch size, over models and passes:
    the sparse engine's is its calibration (the plan cache is off in the benchmark)."""
    parts = []
    for batch in sorted({r.batch for r in a.latency if r.device == "cpu" and r.first_call_s}):
        cells = []
        for engine in LATENCY_ENGINES:
            secs = [t for r in a.latency if (r.device, r.batch, r.engine) == ("cpu", batch, engine) for t in r.first_call_s]
            if secs:
                low, high = f"{min(secs):.2f}", f"{max(secs):.2f}"
                cells.append(f"{ENGINE_LABELS[engine]} {low if low == high else f'{low}–{high}'} s")
        parts.append(f"batch {batch}: " + ", ".join(cells))
    if not parts:
        return []
    return ["First call (untimed above; range over models and passes): " + "; ".join(parts) + ". The sparse "
            "engine's first call at a batch size plans the program, times each layer's ways and races the whole "
            "network against the dense engines, built for it (the first build in a process imports what they need); "
            "the benchmark turns the plan cache off, so every pass pays it "
            "(a user's second load of the same file on the same machine reads the plan instead).\n"]


def dead_paths(a: Analysis) -> list[str]:
    """What the sparse engine took out of each model, and which models compute a constant."""
    cut = {s.row.model: s.row.conv_channels for s in a.speedups if s.row.engine == "sparse" and s.row.channels_cut}
    L = []
    if cut:
        totals = {before for before, _ in cut.values()}
        planned = (f"of the {totals.pop():,} convolution output channels of each model, " + ", ".join(
            f"{m} {after:,}" for m, (_, after) in cut.items())) if len(totals) == 1 else "; ".join(
            f"{m} {after:,} of its {before:,} convolution output channels" for m, (before, after) in cut.items())
        L.append("Dead channels: the sparse engine planned, " + planned + ". The others are channels whose weights "
                 "pruning zeroed entirely (their constant output folded into the bias of the 1×1 convolution that "
                 "reads it) and channels that fed only such ones (`cnnprune.channels`); the logits are the same. "
                 "The FLOP limit counts the nonzero weights of those channels too, so the speedup can pass it.\n")
    constant = [m for m, r in a.models.items() if r.input_independent]
    if constant:
        L.append(f"Logits independent of the input: {', '.join(constant)} (every one of 4 random inputs gets the "
                 "same logits, `measure.logit_spread`). Pruning cut every path from the input to the output of "
                 "these networks: they compute a constant, which engines that do not look for dead channels "
                 "compute at full cost.\n")
    return L


def accuracy_section(a: Analysis) -> list[str]:
    if not a.accuracy_measured:
        return ["## Accuracy\n", f"Accuracy {not_measured_reason(a)}\n"]
    L = ["## Accuracy and agreement between forms\n",
         f"| model | dense | onnx | sparse | max \\|logit diff\\| vs dense | top-1 agreement | "
         f"report (CIFAR-10, k/{REPORT_TEST_IMAGES}, quoted) |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in a.models.items():
        acc = m.accuracy
        L.append(f"| {name} | {pct(acc['dense'])} | {pct(acc['onnx'])} | {pct(acc['sparse'])} | "
                 f"{m.max_logit_diff:.1e} | {pct(m.top1_agreement)} | {REPORT_ACCURACY_CIFAR10[name]:.3f}% |")
    L.append("")
    L += methods_table(a) + recipe_section(a)
    ft = a.results.get("finetune")
    if ft:
        L.append(f"Fine-tuning (beyond the report): iterative_90 with {ft['epochs_per_step']} epoch(s) of masked "
                 f"fine-tuning after each of the 5 steps reaches {pct(ft['accuracy'])} at sparsity "
                 f"{pct(ft['sparsity'])} (vs {pct(a.models['iterative_90'].accuracy['dense'])} "
                 f"without); it cost {ft['seconds']:.0f} s here.\n")
    return L


def methods_table(a: Analysis) -> list[str]:
    """Dense top-1 per checkpoint and pruning method, each against the unpruned model (only when
    this run made more than the report's plain checkpoints)."""
    methods = list(a.methods)
    if methods == ["plain"]:
        return []
    base = a.models["unpruned"].accuracy["dense"]
    L = [f"Accuracy by pruning method (dense, {a.results['dataset']}, {a.results['test_images']:,} test images; "
         f"Δ against the unpruned model's {pct(base)}, exact McNemar p):\n",
         "| model | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
         "|---|" + "---:|" * len(methods)]
    for model in a.pruned:
        cells = [_method_cell(a.methods[m].get(model), base) for m in methods]
        L.append(f"| {model} | " + " | ".join(cells) + " |")
    kept = {m: accuracy_kept(a, m, THRESHOLDS.accuracy_kept_pp) for m in methods}
    L.append(f"| accuracy kept (≤ {THRESHOLDS.accuracy_kept_pp} pp lost) | "
             + " | ".join(f"{len(k)} of {len(k) + len(x)}" for k, x in kept.values()) + " |")
    L.append("")
    return L


def recipe_text(recipe: dict | None) -> str:
    """A model card's training settings in words."""
    if not recipe:
        return "training recipe not recorded beside the checkpoint"
    decay = "every parameter" if recipe.get("decay_norms") else "conv/linear weights"
    return (f"weight decay {recipe.get('weight_decay', '?'):g} on {decay}, {recipe.get('schedule', 'one-cycle')} "
            f"learning rate peaking at {recipe.get('max_lr', '?'):g}, batch {recipe.get('batch_size', '?')}, "
            f"{recipe.get('epochs', '?')} epochs, label smoothing {recipe.get('label_smoothing', 0):g}")


def _cell(accuracy: float | None, base: float, p_value: float | None) -> str:
    """A top-1 with its change against ``base`` in percentage points and the McNemar p where tested."""
    if accuracy is None:
        return "–"
    p = f", p = {p_value:.3f}" if p_value is not None else ""
    return f"{pct(accuracy)} (Δ {100 * (accuracy - base):+.2f} pp{p})"


def _method_cell(r: MethodAccuracy | None, base: float) -> str:
    return _cell(r.accuracy if r else None, base, r.vs_unpruned.p_value if r and r.vs_unpruned else None)


def recipe_section(a: Analysis) -> list[str]:
    """This run's source model beside a second one trained otherwise (``--compare-checkpoint``)."""
    rec = a.results.get("recipes") or {}
    other = rec.get("compare")
    if not other:
        return []
    base = a.models["unpruned"].accuracy["dense"]
    L = ["### Recipe dependence (beyond the report)\n",
         f"Two source models of the same architecture, pruned by the same schedules and evaluated on the same "
         f"{a.results['test_images']:,} test images (dense): this run's, `{Path(rec['source']['checkpoint']).name}` "
         f"({recipe_text(rec['source']['recipe'])}), and `{Path(other['checkpoint']).name}` "
         f"({recipe_text(other['recipe'])}). Δ and the McNemar p are against each model's own unpruned top-1.\n",
         "| model | this run's source: plain | BN-recalibrated | compared source: plain | BN-recalibrated |",
         "|---|---:|---:|---:|---:|",
         f"| unpruned | {pct(base)} | | {pct(other['unpruned'])} | |"]
    for model in a.pruned:
        mine = [a.methods.get(m, {}).get(model) for m in ("plain", "recalibrated")]
        theirs = [other["models"].get(model, {}).get(m) for m in ("plain", "recalibrated")]
        cells = [_method_cell(r, base) for r in mine]
        cells += [_cell(e["accuracy"] if e else None, other["unpruned"],
                        e["vs_unpruned"]["p_value"] if e and e.get("vs_unpruned") else None) for e in theirs]
        L.append(f"| {model} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def size_section(a: Analysis) -> list[str]:
    host = {"both": "runtime or sparse.load"}.get(a.sparse_memory_host, a.sparse_memory_host)  # the memory step's
    L = ["## Size, parameters and memory\n",
         "| model | nonzero / total params | dense .pth | .onnx | .csr.pt | csr / dense | nonzero MACs | "
         f"peak RSS torch / onnxruntime / {host} | RSS added by loading torch / onnxruntime / {host} | weights in "
         "memory dense / sparse |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    forms = ("dense", "onnx", "sparse")
    for name, m in a.models.items():
        f, mem = m.files, m.memory
        L.append(f"| {name} | {m.params_nonzero:,} / {m.params_total:,} | {mb(f['dense'])} | "
                 f"{mb(f.get('onnx'))} | {mb(f.get('csr'))} | {f.get('csr', 0) / f['dense']:.1%} | "
                 f"{m.nonzero_macs / 1e6:.1f} M of {m.dense_macs / 1e6:.1f} M | "
                 + " / ".join(mb(mem[k].peak_rss) if k in mem else "–" for k in forms) + " | "
                 + " / ".join(mb(mem[k].added_by_load) if k in mem else "–" for k in forms) + " | "
                 f"{mb(mem['dense'].weights_in_memory)} / {mb(mem['sparse'].weights_in_memory) if 'sparse' in mem else '–'} |")
    L.append(f"\nPeak RSS at batch {a.memory_batch}, each form in its own smallest process (dense .pth in PyTorch, "
             ".onnx in onnxruntime, " + _sparse_process(a) + "). Parameters counted as every float tensor except BatchNorm "
             "running statistics. Weights in memory, sparse = what the engine holds after the inferences: its folded "
             "weights in CSR plus, for the batch size run, the operands of each layer's chosen mode (sparse: offsets "
             "and values; Winograd: transformed weights, 4× the layer's dense size).\n")
    return L


def _sparse_process(a: Analysis) -> str:
    """What served the sparse form in the memory step, in the size table's note."""
    hosted = f".csr.pt in `cnnprune.sparse.load` with torch and its {_fallbacks(a)}"
    runtime = (".csr.safetensors" if a.spec.is_default else ".graph.safetensors") + " in `cnnprune.runtime`"
    return {"runtime": runtime, "sparse.load": hosted, "both": f"{runtime} where written, else {hosted}"}[a.sparse_memory_host]


def _bench_line(a: Analysis) -> str:
    if a.spec.is_default:
        return "pytest bench --benchmark-autosave"
    return f"pytest bench --bench-arch {a.spec.arch} --bench-artifacts {a.config.artifacts} --benchmark-autosave"


def reproduce_section(a: Analysis, plot_names: list[str]) -> list[str]:
    steps = a.results["step_seconds"]
    L = ["## Plots\n", *[f"![{p}]({p})" for p in plot_names], "", "## Reproduce\n",
         f"```\n{a.config.reproduce()}   # this report\n{_bench_line(a)}   # the timings alone\n```\n",
         "Cost of each step on this machine, in seconds (\"reused\": a valid result of an earlier run with "
         "the same inputs was kept; the figure is what computing it cost then): "
         + ", ".join(f"{k} {v:.0f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in steps.items()) + ".\n"]
    return L


def markdown(a: Analysis, plot_names: list[str]) -> str:
    title = "ResNet18" if a.spec.arch == DEFAULT_ARCH else a.spec.arch
    L = [f"# Does pruning make this {title} faster, smaller and lighter? Measured.\n",
         f"Generated {a.results['generated']} by `bash run_bench.sh` (cnnprune). Every figure below is read from "
         "`results.json` of this run; every verdict is computed from those figures by the rule stated with it.\n"]
    L += how_measured(a) + claims_section(a) + latency_section(a) + cuda_section(a)
    L += accuracy_section(a) + size_section(a) + reproduce_section(a, plot_names)
    return "\n".join(L)
