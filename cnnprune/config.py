"""The settings of a whole run (``bash run_bench.sh`` / ``python -m cnnprune.pipeline``), in one place.

The dataclass is the single source: the pipeline's command-line options, the record stored in
``results.json`` and the report's reproduce line are all generated from its fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnnprune.archs import ARCHS, DEFAULT_ARCH, check_weights_source, get_arch, input_size_checked
from cnnprune.errors import CnnpruneError
from cnnprune.hparams import command_line, names, non_negative_int, opt, positive_int, positive_ints
from cnnprune.schedules import MODELS

DATASETS = ("fashion-mnist", "cifar10", "imagefolder")
TRAIN_DATASETS = ("fashion-mnist", "cifar10")  # the report's network at 32×32: training, fine-tuning, BN


def default_batches(input_size: int) -> tuple[int, ...]:
    """Batch sizes of a default run: (1, 32) at 32×32; (1, 16) at 224, where one batch-16 pass of
    ResNet-50 takes ~0.6 s on 2 cores and keeps a default run near 20 minutes."""
    return (1, 32) if input_size <= 64 else (1, 16)


def _default_threads() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class PipelineConfig:
    dataset: str = opt("fashion-mnist", "dataset of the accuracy step (imagefolder: a folder of class folders at the "
                                        "arch's input size)", choices=DATASETS)
    data_dir: str | None = opt(None, "dataset folder (CIFAR-10: the cifar-10-batches-py folder)")
    arch: str = opt(DEFAULT_ARCH, "network: the report's resnet18-cifar or a torchvision classification model",
                    choices=tuple(ARCHS))
    checkpoint: str | None = opt(None, "unpruned checkpoint of --arch (default: the embedded Fashion-MNIST model)")
    weights: str = opt("checkpoint", "'random': torchvision's initialisation seeded by --seed, no checkpoint "
                                     "(accuracy is then not measured)", choices=("checkpoint", "random"))
    seed: int = opt(0, "seed of --weights random", parse=non_negative_int)
    input_size: int | None = opt(None, "input side in pixels (default: 32 for resnet18-cifar, else 224)",
                                 parse=positive_int)
    artifacts: str = opt("artifacts", "folder for checkpoints and exports")
    reports: str = opt("reports", "folder for REPORT.md, results.json and plots")
    threads: int = opt(help="CPU threads for every engine", parse=positive_int, factory=_default_threads)
    rounds: int | None = opt(None, "timed rounds per benchmark case and pass", parse=positive_int)
    passes: int = opt(3, "passes over the benchmark matrix (speedups are the median of per-pass ratios)",
                      parse=positive_int)
    eval_limit: int | None = opt(None, "evaluate on the first N test images only (smoke runs)", parse=positive_int)
    memory_runs: int | None = opt(None, "inferences per memory measurement (default: 20 at 32×32, 5 above: the peak "
                                        "is reached in the first, and at 224 each costs seconds)", parse=positive_int)
    finetune_epochs: int = opt(0, "also make iterative_90 with K epochs of fine-tuning per step (≈5·K training "
                                  "epochs)", parse=non_negative_int)
    recalibrate_bn: int | None = opt(None, "also make every pruned checkpoint with its BatchNorm statistics "
                                           "re-estimated from N training images and measure its accuracy (0 = skip; "
                                           "default: 2000 for resnet18-cifar, else 0)", parse=non_negative_int)
    compare_checkpoint: str | None = opt(None, "a second unpruned checkpoint (another training recipe) measured "
                                               "beside this run's: plain and BN-recalibrated top-1 of every pruned "
                                               "checkpoint (the report's recipe dependence)")
    cuda_bench: str | None = opt("auto", "pytest-benchmark JSON of a CUDA run (bash bench/cuda.sh) shown as the "
                                         "report's CUDA section; 'auto': REPORTS/cuda/cuda_bench.json when present; "
                                         "'none'")
    batches: tuple[int, ...] = opt((), "comma-separated batch sizes (default: 1,32 at 32×32, else 1,16)",
                                   parse=positive_ints)
    models: tuple[str, ...] = opt(MODELS, "comma-separated models to measure (unpruned among them)", parse=names)
    fresh: bool = opt(False, "redo every step")

    def __post_init__(self) -> None:
        get_arch(self.arch)
        for name, value in self._arch_defaults().items():  # fields left unset take the arch's value
            if getattr(self, name) in (None, ()):
                object.__setattr__(self, name, value)
        input_size_checked(self.input_size, "--input-size")
        self._check_arch()
        bad = [m for m in self.models if m not in MODELS]
        if bad or "unpruned" not in self.models:
            raise CnnpruneError(f"--models must include unpruned and name only {', '.join(MODELS)}")
        if self.compare_checkpoint and not Path(self.compare_checkpoint).is_file():
            raise CnnpruneError(f"--compare-checkpoint {self.compare_checkpoint} does not exist or is not a file")
        if self.dataset == "cifar10" and not self.data_dir:
            raise CnnpruneError("--dataset cifar10 needs --data-dir pointing at a cifar-10-batches-py folder")

    def _arch_defaults(self) -> dict:
        size = get_arch(self.arch).input_size
        small = (self.input_size or size) <= 64
        return {"input_size": size, "batches": default_batches(self.input_size or size),
                "memory_runs": 20 if small else 5,
                "recalibrate_bn": 2000 if self.arch == DEFAULT_ARCH else 0}

    def _check_arch(self) -> None:
        needs = tuple(flag for flag, used in (("--recalibrate-bn", self.recalibrate_bn),
                                              ("--finetune-epochs", self.finetune_epochs),
                                              ("--compare-checkpoint", self.compare_checkpoint)) if used)
        check_weights_source(self.arch, self.weights, self.checkpoint, needs)
        if self.dataset == "imagefolder" and not self.data_dir:
            raise CnnpruneError("--dataset imagefolder needs --data-dir pointing at a folder of class folders")

    @property
    def measures_accuracy(self) -> bool:
        """Accuracy needs trained weights and test images the network was made for: the report's
        datasets for resnet18-cifar, an image folder for any arch."""
        if self.weights == "random":
            return False
        return self.dataset == "imagefolder" or (self.arch == DEFAULT_ARCH and self.input_size == 32)

    def reproduce(self) -> str:
        """The ``run_bench.sh`` command line of this run: the options that differ from the defaults
        (those the arch decides, where they have the arch's value, left out too)."""
        arch_set = tuple(k for k, v in self._arch_defaults().items() if getattr(self, k) == v)
        return command_line(self, "bash run_bench.sh", skip=("fresh", *arch_set))
