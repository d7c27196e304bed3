"""Top-1 accuracy of a checkpoint, or of a whole artifacts folder beside the report's numbers.

Accuracy is always measured on the **whole** test split (10,000 images for both datasets);
the source report's figures were k/9,984 because its loader dropped the last 16 CIFAR-10 test
images, and they are on CIFAR-10, so they are shown as quoted, labelled, never as ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnprune.archs import ARCHS, DEFAULT_ARCH, ModelSpec
from cnnprune.config import DATASETS
from cnnprune.data import Split, load_split
from cnnprune.errors import CliParser, CnnpruneError, add_debug_flag, run_cli
from cnnprune.hparams import add_args, from_args, opt, positive_int
from cnnprune.model import checked_model, load_model, load_state_dict, resolve_checkpoint, spec_of_folder
from cnnprune.schedules import REPORT_ACCURACY_CIFAR10, REPORT_TEST_IMAGES

Predict = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predictions(predict: Predict, split: Split, batch_size: int = 500, limit: int | None = None) -> torch.Tensor:
    """Top-1 class of every test image (int64, N) under ``predict`` (inputs → logits)."""
    return torch.cat([torch.as_tensor(predict(x)).argmax(1) for x, _ in split.batches(batch_size, limit)])


def accuracy(pred: torch.Tensor, split: Split) -> float:
    """Fraction 0–1 of ``pred`` equal to the split's labels."""
    return float((pred == split.labels[: len(pred)]).float().mean())


def evaluate_checkpoint(path: str | Path | None, split: Split, batch_size: int = 500,
                        limit: int | None = None, arch: str = DEFAULT_ARCH) -> float:
    model = load_model(path, arch)
    return accuracy(predictions(model, split, batch_size, limit), split)


@dataclass(frozen=True)
class EvaluateConfig:
    dataset: str = opt("fashion-mnist", "test data set (imagefolder: one folder per class, DIR/val where present)",
                       choices=DATASETS)
    data_dir: str | None = opt(None, "dataset folder (default: embedded Fashion-MNIST test split)")
    arch: str = opt(DEFAULT_ARCH, "network of --checkpoint (--artifacts: read from its manifest)", choices=tuple(ARCHS))
    input_size: int | None = opt(None, "input side in pixels for imagefolder (default: the arch's)", parse=positive_int)
    download: bool = opt(False, "download CIFAR-10 into --data-dir if missing")
    checkpoint: str | None = opt(None, "checkpoint to evaluate (default: the embedded model)")
    artifacts: str | None = opt(None, "evaluate the unpruned source and the six pruned checkpoints of this folder")
    batch_size: int = opt(500, "images per forward pass", parse=positive_int)
    threads: int | None = opt(None, "CPU threads", parse=positive_int)


def _evaluate_folder(folder: Path, split: Split, batch_size: int, spec: ModelSpec) -> None:
    """The source and the six checkpoints of an artifacts folder, beside the report's figures."""
    import json

    from rich.console import Console
    from rich.table import Table

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise CnnpruneError(f"--artifacts {folder} has no manifest.json; run `python -m cnnprune.prune --out {folder}`")
    record = json.loads(manifest.read_text())
    source, names = record["source"], [n for n in record.get("checkpoints", {}) if n in REPORT_ACCURACY_CIFAR10]
    table = Table(title=f"top-1 accuracy of {spec.label}, all {len(split):,} {split.name} test images")
    table.add_column("model")
    table.add_column(f"measured ({split.name})", justify="right")
    table.add_column(f"report (CIFAR-10, k/{REPORT_TEST_IMAGES}, quoted)", justify="right")
    for name in ("unpruned", *names):
        path = Path(source) if name == "unpruned" else folder / f"{name}.pth"
        acc = evaluate_checkpoint(path, split, batch_size, arch=spec.arch)
        table.add_row(name, f"{100 * acc:.2f}%", f"{REPORT_ACCURACY_CIFAR10[name]:.3f}%")
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m cnnprune.evaluate", description=__doc__.splitlines()[0])
    add_args(parser, EvaluateConfig)
    add_debug_flag(parser)
    config = from_args(EvaluateConfig, parser.parse_args(argv))
    if config.threads:
        torch.set_num_threads(config.threads)
    data_dir = Path(config.data_dir) if config.data_dir else None
    if config.artifacts:
        spec = spec_of_folder(config.artifacts)
        split = load_split(config.dataset, "test", data_dir, config.download, spec.input_size, spec.num_classes)
        _evaluate_folder(Path(config.artifacts), split, config.batch_size, spec)
        return 0
    path = resolve_checkpoint(config.checkpoint)
    model = checked_model(load_state_dict(path), str(path), config.arch, own=True)
    size = config.input_size or ARCHS[config.arch].input_size
    split = load_split(config.dataset, "test", data_dir, config.download, size, model.state_dict()[
        ARCHS[config.arch].classifier].shape[0])
    acc = accuracy(predictions(model, split, config.batch_size), split)
    print(f"{100 * acc:.2f}%  top-1 on all {len(split):,} {split.name} test images ({path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
