"""Top-1 accuracy of a checkpoint, or of a whole artifacts folder beside the report's numbers.

Accuracy is always measured on the **whole** test split (10,000 images for both datasets);
the source report's figures were k/9,984 because its loader dropped the last 16 CIFAR-10 test
images, and they are on CIFAR-10, so they are shown as quoted, labelled, never as ours.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from cnnprune.data import DATASETS, Split, load_split
from cnnprune.errors import CnnpruneError, CliParser, add_debug_flag, positive_int, run_cli
from cnnprune.model import load_model, resolve_checkpoint
from cnnprune.schedules import CHECKPOINT_NAMES, REPORT_ACCURACY_CIFAR10, REPORT_TEST_IMAGES

Predict = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predictions(predict: Predict, split: Split, batch_size: int = 500, limit: int | None = None) -> torch.Tensor:
    """Top-1 class of every test image (int64, N) under ``predict`` (inputs → logits)."""
    return torch.cat([torch.as_tensor(predict(x)).argmax(1) for x, _ in split.batches(batch_size, limit)])


def accuracy(pred: torch.Tensor, split: Split) -> float:
    """Fraction 0–1 of ``pred`` equal to the split's labels."""
    return float((pred == split.labels[: len(pred)]).float().mean())


def evaluate_checkpoint(path: str | Path | None, split: Split, batch_size: int = 500,
                        limit: int | None = None) -> float:
    model = load_model(path)
    return accuracy(predictions(model, split, batch_size, limit), split)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = CliParser(prog="python -m cnnprune.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    parser.add_argument("--data-dir", help="dataset folder (default: embedded Fashion-MNIST test split)")
    parser.add_argument("--download", action="store_true", help="download CIFAR-10 into --data-dir if missing")
    parser.add_argument("--checkpoint", help="checkpoint to evaluate (default: the embedded model)")
    parser.add_argument("--artifacts", help="evaluate the unpruned source and the six pruned checkpoints of this folder")
    parser.add_argument("--batch-size", type=positive_int, default=500)
    parser.add_argument("--threads", type=positive_int, help="CPU threads")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = load_split(args.dataset, "test", Path(args.data_dir) if args.data_dir else None, args.download)
    if not args.artifacts:
        path = resolve_checkpoint(args.checkpoint)
        acc = evaluate_checkpoint(path, split, args.batch_size)
        print(f"{100 * acc:.2f}%  top-1 on all {len(split):,} {split.name} test images ({path})")
        return 0
    folder = Path(args.artifacts)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise CnnpruneError(f"--artifacts {folder} has no manifest.json; run `python -m cnnprune.prune --out {folder}`")
    import json

    source = json.loads(manifest.read_text())["source"]
    table = Table(title=f"top-1 accuracy, all {len(split):,} {split.name} test images")
    table.add_column("model")
    table.add_column(f"measured ({split.name})", justify="right")
    table.add_column(f"report (CIFAR-10, k/{REPORT_TEST_IMAGES}, quoted)", justify="right")
    for name in ("unpruned", *CHECKPOINT_NAMES):
        path = Path(source) if name == "unpruned" else folder / f"{name}.pth"
        acc = evaluate_checkpoint(path, split, args.batch_size)
        table.add_row(name, f"{100 * acc:.2f}%", f"{REPORT_ACCURACY_CIFAR10[name]:.3f}%")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
