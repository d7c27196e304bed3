"""The settings of a whole run (``bash run_bench.sh`` / ``python -m cnnprune.pipeline``), in one place.

The dataclass is the single source: the pipeline's command-line options, the record stored in
``results.json`` and the report's reproduce line are all generated from its fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnprune.errors import CnnpruneError
from cnnprune.hparams import command_line, names, non_negative_int, opt, positive_int, positive_ints
from cnnprune.schedules import MODELS

DATASETS = ("fashion-mnist", "cifar10")


def _default_threads() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class PipelineConfig:
    dataset: str = opt("fashion-mnist", "dataset of the accuracy step", choices=DATASETS)
    data_dir: str | None = opt(None, "dataset folder (CIFAR-10: the cifar-10-batches-py folder)")
    checkpoint: str | None = opt(None, "unpruned checkpoint (default: the embedded Fashion-MNIST model)")
    artifacts: str = opt("artifacts", "folder for checkpoints and exports")
    reports: str = opt("reports", "folder for REPORT.md, results.json and plots")
    threads: int = opt(help="CPU threads for every engine", parse=positive_int, factory=_default_threads)
    rounds: int | None = opt(None, "timed rounds per benchmark case and pass", parse=positive_int)
    passes: int = opt(3, "passes over the benchmark matrix (speedups are the median of per-pass ratios)",
                      parse=positive_int)
    eval_limit: int | None = opt(None, "evaluate on the first N test images only (smoke runs)", parse=positive_int)
    memory_runs: int = opt(20, "inferences per memory measurement", parse=positive_int)
    finetune_epochs: int = opt(0, "also make iterative_90 with K epochs of fine-tuning per step (≈5·K training "
                                  "epochs)", parse=non_negative_int)
    recalibrate_bn: int = opt(2000, "also make every pruned checkpoint with its BatchNorm statistics re-estimated from "
                                    "N training images and measure its accuracy (0 = skip)", parse=non_negative_int)
    compare_checkpoint: str | None = opt(None, "a second unpruned checkpoint (another training recipe) measured "
                                               "beside this run's: plain and BN-recalibrated top-1 of every pruned "
                                               "checkpoint (the report's recipe dependence)")
    cuda_bench: str | None = opt("auto", "pytest-benchmark JSON of a CUDA run (bash bench/cuda.sh) shown as the "
                                         "report's CUDA section; 'auto': REPORTS/cuda/cuda_bench.json when present; "
                                         "'none'")
    batches: tuple[int, ...] = opt((1, 32), "comma-separated batch sizes", parse=positive_ints)
    models: tuple[str, ...] = opt(MODELS, "comma-separated models to measure (unpruned among them)", parse=names)
    fresh: bool = opt(False, "redo every step")

    def __post_init__(self) -> None:
        bad = [m for m in self.models if m not in MODELS]
        if bad or "unpruned" not in self.models:
            raise CnnpruneError(f"--models must include unpruned and name only {', '.join(MODELS)}")
        if self.compare_checkpoint and not Path(self.compare_checkpoint).is_file():
            raise CnnpruneError(f"--compare-checkpoint {self.compare_checkpoint} does not exist or is not a file")
        if self.dataset == "cifar10" and not self.data_dir:
            raise CnnpruneError("--dataset cifar10 needs --data-dir pointing at a cifar-10-batches-py folder")

    def reproduce(self) -> str:
        """The ``run_bench.sh`` command line of this run: the options that differ from the defaults."""
        return command_line(self, "bash run_bench.sh", skip=("fresh",))
