"""Train the report's CIFAR ResNet18: the embedded default model and ``--dataset cifar10``.

Default recipe: SGD (momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear weights), one-cycle
learning rate, label smoothing 0.1, random crop (pad 4) + horizontal flip; channels-last memory
(faster on CPU too) and AMP (bf16) on CUDA. The options cover the widely shared PyTorch_CIFAR10
recipe too (README). A training state is written atomically after every epoch, so a killed run
resumes with ``--resume`` where it stopped, and a CSV/JSON log records every epoch.
Under ``torchrun`` the run is data-parallel (:mod:`cnnprune.distributed`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnprune.archs import ARCHS, DEFAULT_ARCH
from cnnprune.config import TRAIN_DATASETS
from cnnprune.data import Split, load_split, random_crop_flip
from cnnprune.distributed import World, join, unwrap
from cnnprune.errors import CliParser, CnnpruneError, add_debug_flag, run_cli
from cnnprune.fileio import safe_torch_load, save_torch, write_bytes, write_json, write_text
from cnnprune.hparams import add_args, command_line, from_args, from_record, non_negative_int, opt, positive_int
from cnnprune.model import build_model

SCHEDULES = ("one-cycle", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = opt("fashion-mnist", "training data set", choices=TRAIN_DATASETS)
    arch: str = opt(DEFAULT_ARCH, "network, trained at the data's 32×32 (the report's resnet18-cifar, or a "
                                  "torchvision model)", choices=tuple(ARCHS))
    data_dir: str | None = opt(None, "dataset folder (default: Debian's Fashion-MNIST folder)")
    epochs: int = opt(10, "training epochs", parse=positive_int)
    batch_size: int = opt(128, "images per optimizer step", parse=positive_int)
    max_lr: float = opt(0.1, "peak one-cycle learning rate", flag="--lr", parse=float)
    momentum: float = opt(0.9, "SGD (Nesterov) momentum", parse=float)
    weight_decay: float = opt(5e-4, "weight decay on conv/linear weights", parse=float)
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy loss", parse=float)
    schedule: str = opt("one-cycle", "learning-rate schedule: one-cycle, or cosine (linear warm-up, then cosine to 0)",
                        choices=SCHEDULES)
    warmup: float = opt(0.25, "share of the steps spent warming the learning rate up", parse=float)
    decay_norms: bool = opt(False, "apply weight decay to BatchNorm weights and biases too (as PyTorch_CIFAR10 "
                                   "does), not only to conv/linear weights")
    seed: int = opt(0, "seed of initialisation, order and augmentation", parse=int)
    device: str = opt("auto", "auto, cpu or cuda")
    threads: int | None = opt(None, "CPU threads (default: torch's)", parse=positive_int)
    train_limit: int | None = opt(None, "train on the first N images only", parse=non_negative_int)
    out: str = opt("runs/train", "output folder")


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when present else cpu; asking for cuda without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CnnpruneError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise CnnpruneError(f"--device {name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


def _param_groups(model: nn.Module, weight_decay: float, decay_norms: bool = False) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 or decay_norms]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 and not decay_norms]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total: int):
    if config.schedule == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.max_lr, total_steps=max(total, 10),
                                                   pct_start=config.warmup)
    warm = max(int(config.warmup * total), 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(total - warm, 1))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate_model(model: nn.Module, split: Split, device: torch.device, batch_size: int = 500,
                   limit: int | None = None) -> float:
    """Top-1 accuracy as a fraction 0–1 over the whole split (or its first ``limit`` images)."""
    model.eval()
    correct = total = 0
    for x, y in split.batches(batch_size, limit):
        logits = model(x.to(device))
        correct += int((logits.argmax(1).cpu() == y).sum())
        total += int(y.numel())
    return correct / max(total, 1)


@dataclass
class _Run:
    """What a training run holds between epochs (``net``: the model as trained, in DDP under torchrun)."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    gen: torch.Generator
    train_split: Split
    test_split: Split
    device: torch.device
    world: World
    steps_per_epoch: int
    log: list[dict]
    start_epoch: int = 0

    def state(self, config: TrainConfig, epoch: int) -> dict:
        return {"config": asdict(config), "epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "log": self.log}

    def augmentation(self, config: TrainConfig, epoch: int) -> torch.Generator:
        """Single process: the order's own generator (as runs before DDP drew them); under DDP one
        per rank and epoch, so that ranks crop their own images differently yet reproducibly."""
        if self.world.size == 1:
            return self.gen
        return torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1_009 + self.world.rank + 1)


def _setup(config: TrainConfig) -> _Run:
    device = resolve_device(config.device)
    world = join(device.type)
    if device.type == "cuda" and world.size > 1:
        device = torch.device(f"cuda:{world.local_rank}")
    if config.threads:
        torch.set_num_threads(config.threads)
    data_dir = Path(config.data_dir) if config.data_dir else None
    train_split = load_split(config.dataset, "train", data_dir)
    if config.train_limit:
        train_split = train_split.subset(config.train_limit)
    torch.manual_seed(config.seed)
    model = build_model(10, config.arch).to(device).to(memory_format=torch.channels_last)
    steps = world.steps(len(train_split), config.batch_size)
    optimizer = torch.optim.SGD(_param_groups(model, config.weight_decay, config.decay_norms), lr=config.max_lr,
                                momentum=config.momentum, nesterov=True)
    return _Run(model, world.wrap(model), optimizer, _scheduler(optimizer, config, config.epochs * steps),
                nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
                torch.Generator().manual_seed(config.seed), train_split, load_split(config.dataset, "test", data_dir),
                device, world, steps, [])


def _resume(run: _Run, state_path: Path, config: TrainConfig) -> None:
    state = safe_torch_load(state_path, "training state")
    # a record written before an option existed holds that option's default
    if not isinstance(state.get("config"), dict) or from_record(TrainConfig, state["config"]) != config:
        raise CnnpruneError(f"{state_path} was written with other settings; use the same options "
                            "to resume, or a new --out")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    run.log, run.start_epoch = state["log"], int(state["epoch"])


def _epoch(run: _Run, config: TrainConfig, epoch: int, advance) -> dict:
    """One pass over the training split (this rank's share of each global batch); returns the
    epoch's log entry, losses and accuracies over all ranks, test accuracy from rank 0."""
    run.net.train()
    order = torch.randperm(len(run.train_split), generator=run.gen)
    aug = run.augmentation(config, epoch)
    amp = run.device.type == "cuda"
    t0 = time.perf_counter()
    loss_sum = correct = seen = 0.0
    for step in range(run.steps_per_epoch):
        idx = run.world.share(order[step * config.batch_size:(step + 1) * config.batch_size])
        x = run.train_split.normalize(random_crop_flip(run.train_split.images[idx], aug)).to(run.device)
        y = run.train_split.labels[idx].to(run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = run.net(x.contiguous(memory_format=torch.channels_last))
            loss = run.criterion(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        loss_sum += float(loss.detach()) * len(idx)
        correct += float((logits.argmax(1) == y).sum())
        seen += len(idx)
        advance(loss_sum / seen, correct / seen)
    loss_sum, correct, seen = run.world.sum(loss_sum, correct, seen)
    test_acc = evaluate_model(unwrap(run.net), run.test_split, run.device) if run.world.main else None
    run.world.barrier()
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "test_acc": test_acc,
            "lr_end": run.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t0}


def _finish(run: _Run, config: TrainConfig, out: Path, seconds: float) -> None:
    """Rank 0 writes the model (fp32 and the shipped fp16 form), the config and the run's record."""
    import platform

    final = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    save_torch(final, out / "model.pth")
    save_torch({k: (v.half() if v.is_floating_point() else v) for k, v in final.items()}, out / "model_fp16.pth")
    write_json(out / "config.json", asdict(config))
    device = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else platform.processor() or "cpu"
    write_json(out / "run.json", {"world_size": run.world.size, "backend": run.world.backend,
                                  "device": f"{run.device.type} ({device})", "host": platform.node(),
                                  "torch": torch.__version__, "epochs": len(run.log), "seconds_this_run": seconds,
                                  "command": command_line(config, "python -m cnnprune.train")})


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run training; returns the final log entry. Rank 0 writes into ``config.out``: ``state.pt``
    (resumable state, each epoch), ``model.pth`` (fp32 state_dict), ``model_fp16.pth`` (the shipped
    form), ``log.csv``, ``log.json``, ``config.json`` and ``run.json`` (world size, device, host)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = Path(config.out)
    run = _setup(config)
    t_start = time.perf_counter()
    try:
        if run.world.main:
            out.mkdir(parents=True, exist_ok=True)
        state_path = out / "state.pt"
        if resume and state_path.is_file():
            _resume(run, state_path, config)
        columns = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"), TimeRemainingColumn()]
        with Progress(*columns, disable=not (progress and run.world.main)) as bar:
            for epoch in range(run.start_epoch, config.epochs):
                task = bar.add_task("train", total=run.steps_per_epoch, epoch=f"{epoch + 1}/{config.epochs}",
                                    loss=0.0, acc=0.0)
                entry = {"epoch": epoch + 1, **_epoch(run, config, epoch, lambda loss, acc, t=task: bar.update(
                    t, advance=1, loss=loss, acc=acc))}
                run.log.append(entry)
                if run.world.main:
                    bar.console.print(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f} "
                                      f"train acc {entry['train_acc']:.4f} test acc {entry['test_acc']:.4f} "
                                      f"({entry['seconds']:.0f} s)")
                    save_torch(run.state(config, epoch + 1), state_path)
                    _write_logs(out, run.log)
        if run.world.main:
            _finish(run, config, out, time.perf_counter() - t_start)
        run.world.barrier()
        return run.log[-1] if run.log else {}
    finally:
        run.world.close()


def package_default(run_dir: Path, command: str, target: Path | None = None) -> Path:
    """Ship a finished run as the embedded default: fp16 state_dict + a JSON card beside it
    (sha256, the training command, config, where it ran (``run.json``: device, host, world size),
    per-epoch log and the fp16 model's test accuracy)."""
    from cnnprune.fileio import sha256_file
    from cnnprune.model import default_checkpoint, load_model

    source = run_dir / "model_fp16.pth"
    trained = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    if trained.get("arch", DEFAULT_ARCH) != DEFAULT_ARCH:
        raise CnnpruneError(f"{run_dir} trained {trained['arch']}; the embedded default is {DEFAULT_ARCH}")
    if not source.is_file():
        raise CnnpruneError(f"{source} does not exist; finish the training run first")
    target = target or default_checkpoint()
    write_bytes(target, source.read_bytes())
    config = json.loads((run_dir / "config.json").read_text())
    test = load_split(config["dataset"], "test", Path(config["data_dir"]) if config["data_dir"] else None)
    acc = evaluate_model(load_model(target), test, torch.device("cpu"))
    card = {"file": target.name, "sha256": sha256_file(target), "bytes": target.stat().st_size,
            "storage": "float16 (loaded as float32)", "dataset": config["dataset"],
            "test_accuracy_fp16": acc, "test_images": len(test), "command": command, "config": config,
            "log": json.loads((run_dir / "log.json").read_text()), "torch": torch.__version__,
            "trained_on": json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else None}
    write_json(target.with_suffix(".json"), card)
    return target


def _write_logs(out: Path, log: list[dict]) -> None:
    write_json(out / "log.json", log)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(log[0]))
    writer.writeheader()
    writer.writerows(log)
    write_text(out / "log.csv", buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m cnnprune.train", description=__doc__.splitlines()[0])
    add_args(parser, TrainConfig)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    parser.add_argument("--package", metavar="RUN_DIR",
                        help="do not train: ship RUN_DIR's finished model as the embedded default checkpoint")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.package:
        run_dir = Path(args.package)
        if not (run_dir / "config.json").is_file():
            raise CnnpruneError(f"--package {run_dir} holds no finished run (config.json missing)")
        config = from_record(TrainConfig, json.loads((run_dir / "config.json").read_text()))
        target = package_default(run_dir, command_line(config, "python -m cnnprune.train"))
        print(f"packaged {target} ({target.stat().st_size:,} bytes)")
        return 0
    config = from_args(TrainConfig, args)
    final = train(config, resume=args.resume)
    if final.get("test_acc") is not None:
        print(f"final test accuracy {100 * final['test_acc']:.2f}%; written to {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
