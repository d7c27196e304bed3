"""Prune the CIFAR ResNet18 (or any listed CNN: ``--arch``) as the report did; write permanent checkpoints.

``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` over every Conv2d and
Linear ``weight`` (BatchNorm untouched), one call per schedule step, masks kept between steps
so each step prunes a fraction of what is still unpruned. Sparsity is measured twice: as the
report did (zeros of the ``weight_mask`` buffers) and on the permanent tensors afterwards.

``--finetune-epochs K`` goes beyond the report: K epochs of masked fine-tuning after every
iterative step (real iterative magnitude pruning). K = 0, the default, is the report's method,
whose iterative result equals one-shot up to rounding.

``--arch`` takes any network of :mod:`cnnprune.archs` with the user's state_dict
(``--checkpoint``) or torchvision's seeded initialisation (``--weights random``); the manifest
records the architecture, class count and input size, and every later step reads them there.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from cnnprune.archs import ARCHS, DEFAULT_ARCH, ModelSpec, check_weights_source, get_arch, input_size_checked, random_classes
from cnnprune.config import TRAIN_DATASETS
from cnnprune.distributed import World, join
from cnnprune.errors import CliParser, CnnpruneError, add_debug_flag, run_cli
from cnnprune.fileio import remove_stale_temps, save_torch, sha256_file
from cnnprune.hparams import add_args, from_args, names, non_negative_int, opt, positive_int
from cnnprune.model import build_model, checked_model, load_state_dict, prunable_modules, resolve_checkpoint
from cnnprune.schedules import REPORT_SCHEDULES, Schedule, custom_schedules
from cnnprune.steps import Ledger, Progress, Step

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


def prune_state(source: dict[str, torch.Tensor], schedule: Schedule, after_step: StepHook | None = None,
                arch: str = DEFAULT_ARCH) -> tuple[dict[str, torch.Tensor], dict]:
    """Prune a copy of ``source`` (an ``arch`` state_dict); return (permanent state_dict, manifest entry)."""
    model = checked_model(source, "the source checkpoint", arch)
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


def prune_2_4(state: dict[str, torch.Tensor], arch: str = DEFAULT_ARCH) -> dict[str, torch.Tensor]:
    """2:4 semi-structured magnitude pruning (beyond the report): a copy of ``state`` in which
    every group of 4 consecutive weights along a conv/linear row's reduction axis (in·kh·kw,
    the order ``F.unfold`` gives the im2col GEMM) keeps its 2 largest |w| (ties: the earlier).

    This is the pattern NVIDIA's sparse tensor cores execute at half the multiply-adds, the
    structure a GPU needs where unstructured masks give it nothing. Layers whose reduction
    length is not a multiple of 4 (the 3-channel stem: 27) stay dense. No fine-tuning.
    """
    model = checked_model(state, "the 2:4 source", arch)
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


def write_2_4(source: Path, out: Path, arch: str = DEFAULT_ARCH) -> Path:
    """``source`` (a permanent checkpoint) pruned 2:4 (``prune_2_4``), written atomically to ``out``."""
    state = prune_2_4(load_state_dict(source), arch)
    save_torch(state, out)
    return out


def fractions(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated sparsities in [0, 1), such as ``0.5,0.9``."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated fractions such as 0.5,0.9") from None
    bad = [t for t in values if not 0.0 <= t < 1.0]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"sparsity {bad[0] if bad else text!r} is outside [0, 1); give fractions "
                                         "such as 0.9")
    return values


@dataclass(frozen=True)
class PruneConfig:
    checkpoint: str | None = opt(None, "unpruned checkpoint: a state_dict of --arch (default: the embedded "
                                       "Fashion-MNIST model)")
    arch: str = opt(DEFAULT_ARCH, "network of the checkpoint: the report's resnet18-cifar or a torchvision "
                                  "classification model", choices=tuple(ARCHS))
    weights: str = opt("checkpoint", "'random': no checkpoint, torchvision's initialisation seeded by --seed "
                                     "(accuracy is then not measured)", choices=("checkpoint", "random"))
    seed: int = opt(0, "seed of --weights random", parse=non_negative_int)
    num_classes: int | None = opt(None, "classes of --weights random (default: 10 for resnet18-cifar, else 1000)",
                                  parse=positive_int)
    input_size: int | None = opt(None, "input side in pixels recorded for export and benchmark (default: 32 for "
                                       "resnet18-cifar, else 224)", parse=positive_int)
    out: str = opt("artifacts", "output folder")
    finetune_epochs: int = opt(0, "epochs of masked fine-tuning after each iterative step (0 = the report's method)",
                               parse=non_negative_int)
    finetune_limit: int | None = opt(None, "fine-tune on the first N training images", parse=positive_int)
    data_dir: str | None = opt(None, "training data folder, for --finetune-epochs")
    dataset: str = opt("fashion-mnist", "training data set, for --finetune-epochs", choices=TRAIN_DATASETS)
    only: tuple[str, ...] = opt((), "comma-separated subset of the checkpoints to make", parse=names)
    targets: tuple[float, ...] = opt((), "instead of the report's six: comma-separated sparsities in [0, 1), each "
                                         "made one-shot and iteratively", parse=fractions)
    steps: int = opt(5, "iterative steps for --targets", parse=positive_int)
    recalibrate_bn: int = opt(0, "after pruning, re-estimate every BatchNorm's running statistics from the first N "
                                 "training images (0 = the report's method)", parse=non_negative_int)
    fresh: bool = opt(False, "redo every checkpoint")

    def __post_init__(self) -> None:
        get_arch(self.arch)
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise CnnpruneError(f"--checkpoint {self.checkpoint} does not exist or is not a file")
        needs = tuple(flag for flag, used in (("--finetune-epochs", self.finetune_epochs),
                                              ("--recalibrate-bn", self.recalibrate_bn)) if used)
        check_weights_source(self.arch, self.weights, self.checkpoint, needs)
        if self.num_classes is not None and self.weights != "random":
            raise CnnpruneError("--num-classes applies to --weights random only; a checkpoint's classes come from it")
        if self.input_size is not None:
            input_size_checked(self.input_size, "--input-size")
        known = [s.name for s in self._all_schedules()]
        unknown = [n for n in self.only if n not in known]
        if unknown:
            raise CnnpruneError(f"--only {unknown[0]!r} is not one of {', '.join(known)}")

    def _all_schedules(self) -> tuple[Schedule, ...]:
        return custom_schedules(list(self.targets), self.steps) if self.targets else REPORT_SCHEDULES

    def schedules(self) -> tuple[Schedule, ...]:
        """The report's six, or one-shot and iterative per ``targets``; only those named by ``only``."""
        return tuple(s for s in self._all_schedules() if not self.only or s.name in self.only)


def _prune_step(config: PruneConfig, schedule: Schedule, source_sha: str) -> Step:
    """A checkpoint is current while its source, schedule and fine-tuning are unchanged."""
    inputs: tuple = (source_sha, asdict(schedule))
    if schedule.method == "iterative" and config.finetune_epochs:
        inputs += (config.finetune_epochs, config.finetune_limit, config.dataset, config.data_dir)
    if config.recalibrate_bn:
        inputs += ("recalibrate_bn", config.recalibrate_bn, config.dataset, config.data_dir)
    return Step(f"prune {schedule.name}", inputs, ("recalibrate.py",) if config.recalibrate_bn else (),
                (Path(config.out) / f"{schedule.name}.pth",))


class _Calibration:
    """The calibration images of ``--recalibrate-bn``, read once, on first use."""

    def __init__(self, config: PruneConfig) -> None:
        self.config, self._split = config, None

    def apply(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        from cnnprune.data import calibration_split
        from cnnprune.recalibrate import recalibrate_state

        c = self.config
        if self._split is None:
            self._split = calibration_split(c.dataset, Path(c.data_dir) if c.data_dir else None, c.recalibrate_bn)
        return recalibrate_state(state, self._split), {"images": len(self._split), "source": self._split.source}


def run_pruning(config: PruneConfig, schedules: Sequence[Schedule] | None = None, progress: bool = True) -> dict:
    """Write ``NAME.pth`` for each schedule (default: ``config.schedules()``) and ``manifest.json``
    into ``config.out``; return the manifest.

    A checkpoint made from the same source (sha256) with the same schedule and still matching
    its recorded checksum is kept unless ``config.fresh``.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    source_path, source = _source(config, out)
    spec = ModelSpec.of(config.arch, source, str(source_path), config.input_size)
    checked_model(source, str(source_path), config.arch)
    source_sha = sha256_file(source_path)
    schedules = config.schedules() if schedules is None else tuple(schedules)
    world = join("cpu")
    hook = _finetune_hook(config, world) if config.finetune_epochs > 0 else None
    calibration = _Calibration(config)
    # under torchrun every rank must make the same checkpoints (their fine-tuning is collective),
    # so nothing is reused there, and rank 0 alone writes
    ledger = Ledger(out / "manifest.json", "checkpoints", fresh=config.fresh or world.size > 1, write=world.main, header={
        "source": str(source_path), "source_sha256": source_sha, "model": spec.record(),
        "weights": f"random (torchvision initialisation, seed {config.seed})" if config.weights == "random" else
        "checkpoint", **({"seed": config.seed} if config.weights == "random" else {}),
        "finetune_epochs": config.finetune_epochs,
        "recalibrate_bn": config.recalibrate_bn, "pytorch": torch.__version__})

    def make(schedule: Schedule) -> dict:
        t0 = time.perf_counter()
        state, entry = prune_state(source, schedule, hook if schedule.method == "iterative" else None, config.arch)
        if config.recalibrate_bn:
            state, entry["recalibrate_bn"] = calibration.apply(state)
        path = out / f"{schedule.name}.pth"
        if world.main:
            save_torch(state, path)
            entry.update(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        return entry

    with Progress(progress and world.main).task("prune", len(schedules)) as start:
        for schedule in schedules:
            start(schedule.name)
            ledger.run(schedule.name, _prune_step(config, schedule, source_sha), lambda s=schedule: make(s))
    world.barrier()
    return ledger.data


RANDOM_SOURCE = "unpruned.pth"  # where --weights random keeps its seeded initial weights, in --out


def _source(config: PruneConfig, out: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """The unpruned weights and their file: the checkpoint, or (``--weights random``) torchvision's
    initialisation under ``--seed``, written to OUT/unpruned.pth unless an identical file is there."""
    if config.weights != "random":
        path = resolve_checkpoint(config.checkpoint)
        return path, load_state_dict(path)
    torch.manual_seed(config.seed)
    classes = config.num_classes or random_classes(config.arch)
    state = {k: v.detach().clone() for k, v in build_model(classes, config.arch).state_dict().items()}
    path = out / RANDOM_SOURCE
    if not (path.is_file() and _same_state(load_state_dict(path), state)):
        save_torch(state, path)
    return path, state


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


FINETUNE_BATCH = 128  # global batch of the masked fine-tuning (split over the ranks under torchrun)


def _finetune_hook(config: PruneConfig, world: World) -> StepHook:
    """Masked fine-tuning after each iterative step: SGD, cosine LR 0.01→0, same augmentation;
    data-parallel under torchrun (each rank its share of every global batch)."""
    from cnnprune.data import load_split, random_crop_flip

    split = load_split(config.dataset, "train", Path(config.data_dir) if config.data_dir else None)
    if config.finetune_limit:
        split = split.subset(config.finetune_limit)
    gen = torch.Generator().manual_seed(0)
    aug = gen if world.size == 1 else torch.Generator().manual_seed(world.rank + 1)

    def hook(model: nn.Module, schedule: Schedule, step: int) -> None:
        net = world.wrap(model)
        net.train()
        per_epoch = world.steps(len(split), FINETUNE_BATCH)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(config.finetune_epochs * per_epoch, 1))
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        for _ in range(config.finetune_epochs):
            order = torch.randperm(len(split), generator=gen)
            for i in range(per_epoch):
                idx = world.share(order[i * FINETUNE_BATCH:(i + 1) * FINETUNE_BATCH])
                x = split.normalize(random_crop_flip(split.images[idx], aug))
                loss = loss_fn(net(x), split.labels[idx])
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
    add_args(parser, PruneConfig)
    add_debug_flag(parser)
    config = from_args(PruneConfig, parser.parse_args(argv))
    manifest = run_pruning(config)
    world = join("cpu")
    world.close()
    if not world.main:
        return 0
    table = Table(title=f"pruned checkpoints in {config.out} ({ModelSpec.from_record(manifest['model']).label})")
    for col in ("checkpoint", "method", "target", "sparsity (masks)", "sparsity (tensors)", "nonzero weights"):
        table.add_column(col, justify="right" if col not in ("checkpoint", "method") else "left")
    for name, e in manifest["checkpoints"].items():
        table.add_row(name, e["method"], f"{e['target_sparsity']:.2%}", f"{e['sparsity_mask']:.4%}",
                      f"{e['sparsity_tensor']:.4%}", f"{e['nonzero_prunable_weights']:,}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
