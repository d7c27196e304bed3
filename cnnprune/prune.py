"""Prune the CIFAR ResNet18 exactly as the report did, and write the six permanent checkpoints.

``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` over every Conv2d and
Linear ``weight`` (BatchNorm untouched), one call per schedule step, masks kept between steps
so each step prunes a fraction of what is still unpruned. Sparsity is measured twice: as the
report did (zeros of the ``weight_mask`` buffers) and on the permanent tensors afterwards.

``--finetune-epochs K`` goes beyond the report: K epochs of masked fine-tuning after every
iterative step (real iterative magnitude pruning). K = 0, the default, is the report's method,
whose iterative result equals one-shot up to rounding.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from cnnprune.errors import CnnpruneError, CliParser, add_debug_flag, non_negative_int, run_cli
from cnnprune.fileio import remove_stale_temps, save_torch, sha256_file, write_json
from cnnprune.model import build_model, check_state_dict, load_state_dict, prunable_modules, resolve_checkpoint
from cnnprune.schedules import REPORT_SCHEDULES, Schedule, custom_schedules

StepHook = Callable[[nn.Module, Schedule, int], None]


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros and total weights of one conv/linear layer."""

    name: str
    zeros: int
    total: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.total if self.total else 0.0


def global_l1_step(model: nn.Module, amount: float) -> None:
    """One ``global_unstructured`` L1 call over every conv/linear weight (the report's call)."""
    params = [(module, "weight") for _, module in prunable_modules(model)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)


def mask_sparsity(model: nn.Module) -> list[LayerSparsity]:
    """Per-layer sparsity from the ``weight_mask`` buffers, as the report computed it."""
    buffers = dict(model.named_buffers())
    out = []
    for name, _ in prunable_modules(model):
        mask = buffers.get(f"{name}.weight_mask")
        if mask is None:
            raise CnnpruneError(f"layer {name} has no weight_mask; prune the model first")
        out.append(LayerSparsity(name, int((mask == 0).sum()), mask.numel()))
    return out


def tensor_sparsity(state: dict[str, torch.Tensor], layer_names: Sequence[str]) -> list[LayerSparsity]:
    """Per-layer sparsity of permanent weights: exact zeros in each conv/linear ``weight``."""
    return [LayerSparsity(n, int((state[f"{n}.weight"] == 0).sum()), state[f"{n}.weight"].numel())
            for n in layer_names]


def global_fraction(layers: Sequence[LayerSparsity]) -> float:
    """Global sparsity (fraction 0–1): zeros over all conv/linear weights."""
    total = sum(l.total for l in layers)
    return sum(l.zeros for l in layers) / total if total else 0.0


def apply_schedule(model: nn.Module, schedule: Schedule, after_step: StepHook | None = None) -> list[LayerSparsity]:
    """Prune ``model`` in place with ``schedule``, make it permanent; return the mask sparsity.

    ``after_step(model, schedule, step)`` runs after each step while masks are still attached
    (fine-tuning keeps pruned weights at zero through them).
    """
    for step in range(schedule.steps):
        global_l1_step(model, schedule.amount)
        if after_step is not None:
            after_step(model, schedule, step)
    measured = mask_sparsity(model)
    for _, module in prunable_modules(model):
        torch_prune.remove(module, "weight")
    return measured


def canonical_zeros(tensor: torch.Tensor) -> torch.Tensor:
    """Turn the −0.0 that ``weight * mask`` leaves for negative pruned weights into +0.0.

    The two are equal as numbers; canonical zeros make every form (dense, CSR) bit-identical.
    """
    if tensor.is_floating_point():
        tensor[tensor == 0] = 0.0
    return tensor


def prune_state(source: dict[str, torch.Tensor], schedule: Schedule,
                after_step: StepHook | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Prune a copy of ``source``; return (permanent state_dict, manifest entry)."""
    model = build_model()
    model.load_state_dict(source)
    layer_names = [n for n, _ in prunable_modules(model)]
    by_mask = apply_schedule(model, schedule, after_step)
    state = {k: canonical_zeros(v.detach().clone()) for k, v in model.state_dict().items()}
    by_tensor = tensor_sparsity(state, layer_names)
    entry = {
        "method": schedule.method,
        "schedule": {"steps": schedule.steps, "amount_per_step": schedule.amount,
                     "final_fraction_nominal": schedule.final_fraction},
        "target_sparsity": schedule.target,
        "sparsity_mask": global_fraction(by_mask),
        "sparsity_tensor": global_fraction(by_tensor),
        "prunable_weights": sum(l.total for l in by_tensor),
        "nonzero_prunable_weights": sum(l.total - l.zeros for l in by_tensor),
        "per_layer": {l.name: {"zeros": l.zeros, "total": l.total, "sparsity": l.fraction} for l in by_tensor},
    }
    return state, entry


def prune_2_4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """2:4 semi-structured magnitude pruning (beyond the report): a copy of ``state`` in which
    every group of 4 consecutive weights along a conv/linear row's reduction axis (in·kh·kw,
    the order ``F.unfold`` gives the im2col GEMM) keeps its 2 largest |w| (ties: the earlier).

    This is the pattern NVIDIA's sparse tensor cores execute at half the multiply-adds, the
    structure a GPU needs where unstructured masks give it nothing. Layers whose reduction
    length is not a multiple of 4 (the 3-channel stem: 27) stay dense. No fine-tuning.
    """
    model = build_model()
    out = {k: v.detach().clone() for k, v in state.items()}
    for name, _ in prunable_modules(model):
        w = out[f"{name}.weight"]
        rows = w.reshape(w.shape[0], -1)
        if rows.shape[1] % 4:
            continue
        groups = rows.reshape(rows.shape[0], -1, 4)
        order = torch.argsort(groups.abs(), dim=-1, descending=True, stable=True)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :2], True)
        out[f"{name}.weight"] = canonical_zeros((groups * keep).reshape(w.shape).contiguous())
    return out


def is_2_4(matrix: torch.Tensor) -> bool:
    """True when every group of 4 consecutive entries of each row has at most 2 nonzeros."""
    if matrix.ndim != 2 or matrix.shape[1] % 4:
        return False
    return bool(((matrix.reshape(matrix.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def write_2_4(source: Path, out: Path) -> Path:
    """``source`` (a permanent checkpoint) pruned 2:4 (``prune_2_4``), written atomically to ``out``."""
    state = prune_2_4(load_state_dict(source))
    check_state_dict(build_model(), state, str(source))
    save_torch(state, out)
    return out


@dataclass(frozen=True)
class PruneConfig:
    checkpoint: str | None = None
    out: str = "artifacts"
    finetune_epochs: int = 0
    finetune_limit: int | None = None
    data_dir: str | None = None
    dataset: str = "fashion-mnist"
    fresh: bool = False


def _is_current(manifest: dict, name: str, out: Path, source_sha: str, finetune_epochs: int) -> bool:
    entry = manifest.get("checkpoints", {}).get(name)
    path = out / f"{name}.pth"
    return (manifest.get("source_sha256") == source_sha and manifest.get("finetune_epochs") == finetune_epochs
            and entry is not None and path.is_file() and sha256_file(path) == entry.get("sha256"))


def run_pruning(config: PruneConfig, schedules: Sequence[Schedule] = REPORT_SCHEDULES,
                progress: bool = True) -> dict:
    """Write ``NAME.pth`` for each schedule and ``manifest.json`` into ``config.out``; return the manifest.

    Checkpoints already present, made from the same source (sha256) and still matching their
    recorded checksum, are kept unless ``config.fresh``.
    """
    import json

    from rich.progress import Progress

    source_path = resolve_checkpoint(config.checkpoint)
    source = load_state_dict(source_path)
    check_state_dict(build_model(), source, str(source_path))
    source_sha = sha256_file(source_path)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    manifest_path = out / "manifest.json"
    old: dict = {}
    if manifest_path.is_file() and not config.fresh:
        try:
            old = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
    manifest = {"source": str(source_path), "source_sha256": source_sha,
                "finetune_epochs": config.finetune_epochs,
                "pytorch": torch.__version__, "checkpoints": {}}
    hook = _finetune_hook(config) if config.finetune_epochs > 0 else None
    with Progress(disable=not progress) as bar:
        task = bar.add_task("pruning", total=len(schedules))
        for schedule in schedules:
            bar.update(task, description=f"pruning {schedule.name}")
            if _is_current(old, schedule.name, out, source_sha, config.finetune_epochs):
                manifest["checkpoints"][schedule.name] = old["checkpoints"][schedule.name]
            else:
                t0 = time.perf_counter()
                state, entry = prune_state(source, schedule, hook if schedule.method == "iterative" else None)
                path = out / f"{schedule.name}.pth"
                save_torch(state, path)
                entry.update(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size,
                             seconds=round(time.perf_counter() - t0, 2))
                manifest["checkpoints"][schedule.name] = entry
            write_json(manifest_path, manifest)
            bar.advance(task)
    return manifest


def _finetune_hook(config: PruneConfig) -> StepHook:
    """Masked fine-tuning after each iterative step: SGD, cosine LR 0.01→0, same augmentation."""
    from cnnprune.data import load_split, random_crop_flip

    split = load_split(config.dataset, "train", Path(config.data_dir) if config.data_dir else None)
    if config.finetune_limit:
        split = split.subset(config.finetune_limit)
    gen = torch.Generator().manual_seed(0)

    def hook(model: nn.Module, schedule: Schedule, step: int) -> None:
        model.train()
        steps = config.finetune_epochs * ((len(split) + 127) // 128)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        for _ in range(config.finetune_epochs):
            order = torch.randperm(len(split), generator=gen)
            for i in range(0, len(split), 128):
                idx = order[i:i + 128]
                x = split.normalize(random_crop_flip(split.images[idx], gen))
                loss = loss_fn(model(x), split.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()

    return hook


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = CliParser(prog="python -m cnnprune.prune", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="unpruned checkpoint (default: the embedded Fashion-MNIST model)")
    parser.add_argument("--out", default="artifacts", help="output folder (default artifacts/)")
    parser.add_argument("--finetune-epochs", type=non_negative_int, default=0,
                        help="epochs of masked fine-tuning after each iterative step (0 = the report's method)")
    parser.add_argument("--finetune-limit", type=non_negative_int, help="fine-tune on the first N training images")
    parser.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "cifar10"))
    parser.add_argument("--data-dir", help="training data folder, for --finetune-epochs")
    parser.add_argument("--only", help="comma-separated subset of the six checkpoints to make")
    parser.add_argument("--targets", help="instead of the report's six: comma-separated sparsities in [0, 1), "
                                          "each made one-shot and iteratively")
    parser.add_argument("--steps", type=int, default=5, help="iterative steps for --targets (default 5)")
    parser.add_argument("--fresh", action="store_true", help="redo every checkpoint")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    schedules = REPORT_SCHEDULES
    if args.targets:
        try:
            targets = [float(t) for t in args.targets.split(",") if t.strip()]
        except ValueError:
            raise CnnpruneError(f"--targets {args.targets!r} must be comma-separated fractions such as 0.5,0.9") from None
        bad = [t for t in targets if not 0.0 <= t < 1.0]
        if bad:
            raise CnnpruneError(f"--targets: sparsity {bad[0]} is outside [0, 1); give fractions such as 0.9")
        if args.steps < 1:
            raise CnnpruneError(f"--steps {args.steps}: the iterative step count must be ≥ 1")
        schedules = custom_schedules(targets, args.steps)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in {s.name for s in schedules}]
        if unknown:
            raise CnnpruneError(f"--only {unknown[0]!r} is not one of {', '.join(s.name for s in schedules)}")
        schedules = tuple(s for s in schedules if s.name in wanted)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise CnnpruneError(f"--checkpoint {args.checkpoint} does not exist or is not a file")
    config = PruneConfig(args.checkpoint, args.out, args.finetune_epochs, args.finetune_limit or None,
                         args.data_dir, args.dataset, args.fresh)
    manifest = run_pruning(config, schedules)
    table = Table(title=f"pruned checkpoints in {args.out}")
    for col in ("checkpoint", "method", "target", "sparsity (masks)", "sparsity (tensors)", "nonzero weights"):
        table.add_column(col, justify="right" if col not in ("checkpoint", "method") else "left")
    for name, e in manifest["checkpoints"].items():
        table.add_row(name, e["method"], f"{e['target_sparsity']:.2%}", f"{e['sparsity_mask']:.4%}",
                      f"{e['sparsity_tensor']:.4%}", f"{e['nonzero_prunable_weights']:,}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
