"""Train the report's CIFAR ResNet18: the embedded default model and ``--dataset cifar10``.

Recipe: SGD (momentum 0.9, Nesterov, weight decay 5e-4 on conv/linear weights), one-cycle
learning rate, label smoothing 0.1, random crop (pad 4) + horizontal flip; channels-last memory
(faster on CPU too) and AMP (bf16) on CUDA. A training state is written atomically after every epoch, so a killed
run resumes with ``--resume`` where it stopped, and a CSV/JSON log records every epoch.
"""

from __future__ import annotations

import argparse
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

from cnnprune.data import DATASETS, Split, load_split, random_crop_flip
from cnnprune.errors import CnnpruneError, CliParser, add_debug_flag, non_negative_int, positive_int, run_cli
from cnnprune.fileio import safe_torch_load, save_torch, write_bytes, write_json, write_text
from cnnprune.model import build_model


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128
    max_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    train_limit: int | None = None
    out: str = "runs/train"


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when present else cpu; asking for cuda without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CnnpruneError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise CnnpruneError(f"--device {name!r} is unknown; use auto, cpu or cuda")
    return torch.device(name)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


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


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Run training; returns the final log entry. Writes into ``config.out``:

    ``state.pt`` (resumable state, each epoch), ``model.pth`` (fp32 state_dict),
    ``model_fp16.pth`` (the shipped form), ``log.csv`` and ``log.json``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_split = load_split(config.dataset, "train", Path(config.data_dir) if config.data_dir else None)
    test_split = load_split(config.dataset, "test", Path(config.data_dir) if config.data_dir else None)
    if config.train_limit:
        train_split = train_split.subset(config.train_limit)
    torch.manual_seed(config.seed)
    model = build_model().to(device).to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    optimizer = torch.optim.SGD(_param_groups(model, config.weight_decay), lr=config.max_lr,
                                momentum=config.momentum, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.max_lr,
                                                    total_steps=max(config.epochs * steps_per_epoch, 10),
                                                    pct_start=0.25)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    gen = torch.Generator().manual_seed(config.seed)
    log: list[dict] = []
    start_epoch = 0
    state_path = out / "state.pt"
    if resume and state_path.is_file():
        state = safe_torch_load(state_path, "training state")
        if state.get("config") != asdict(config):
            raise CnnpruneError(f"{state_path} was written with other settings; use the same options "
                                "to resume, or a new --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        log = state["log"]
        start_epoch = int(state["epoch"])
    amp = device.type == "cuda"
    columns = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            order = torch.randperm(len(train_split), generator=gen)
            task = bar.add_task("train", total=steps_per_epoch, epoch=f"{epoch + 1}/{config.epochs}", loss=0.0, acc=0.0)
            t0 = time.perf_counter()
            loss_sum = correct = seen = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                images = random_crop_flip(train_split.images[idx], gen)
                x = train_split.normalize(images).to(device)
                y = train_split.labels[idx].to(device)
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(x)
                    loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(idx)
                correct += float((logits.argmax(1) == y).sum())
                seen += len(idx)
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen)
            test_acc = evaluate_model(model, test_split, device)
            entry = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                     "test_acc": test_acc, "lr_end": scheduler.get_last_lr()[0],
                     "seconds": time.perf_counter() - t0}
            log.append(entry)
            bar.console.print(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f} "
                              f"train acc {entry['train_acc']:.4f} test acc {test_acc:.4f} "
                              f"({entry['seconds']:.0f} s)")
            save_torch({"config": asdict(config), "epoch": epoch + 1, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "log": log},
                       state_path)
            _write_logs(out, log)
    final = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_torch(final, out / "model.pth")
    save_torch({k: (v.half() if v.is_floating_point() else v) for k, v in final.items()}, out / "model_fp16.pth")
    write_json(out / "config.json", asdict(config))
    return log[-1] if log else {}


def package_default(run_dir: Path, command: str, target: Path | None = None) -> Path:
    """Ship a finished run as the embedded default: fp16 state_dict + a JSON card beside it
    (sha256, the training command, config, per-epoch log and the fp16 model's test accuracy)."""
    from cnnprune.fileio import sha256_file
    from cnnprune.model import default_checkpoint, load_model

    source = run_dir / "model_fp16.pth"
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
            "log": json.loads((run_dir / "log.json").read_text()), "torch": torch.__version__}
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
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    parser.add_argument("--data-dir", help="dataset folder (default: Debian's Fashion-MNIST folder)")
    parser.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.max_lr, help="peak one-cycle learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=positive_int, help="CPU threads (default: torch's)")
    parser.add_argument("--train-limit", type=non_negative_int, help="train on the first N images only")
    parser.add_argument("--out", default=TrainConfig.out, help="output folder (default runs/train)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    parser.add_argument("--package", metavar="RUN_DIR",
                        help="do not train: ship RUN_DIR's finished model as the embedded default checkpoint")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.package:
        run_dir = Path(args.package)
        config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else None
        if config is None:
            raise CnnpruneError(f"--package {run_dir} holds no finished run (config.json missing)")
        command = (f"python -m cnnprune.train --dataset {config['dataset']} --epochs {config['epochs']} "
                   f"--seed {config['seed']} --out {run_dir}")
        target = package_default(run_dir, command)
        print(f"packaged {target} ({target.stat().st_size:,} bytes)")
        return 0
    config = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                         batch_size=args.batch_size, max_lr=args.lr, seed=args.seed, device=args.device,
                         threads=args.threads, train_limit=args.train_limit or None, out=args.out)
    final = train(config, resume=args.resume)
    print(f"final test accuracy {100 * final.get('test_acc', float('nan')):.2f}%; written to {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
