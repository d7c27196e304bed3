"""The report's pruning schedules, in one place.

One-shot: a single ``global_unstructured`` call removing 50 %, 75 % or 90 % of all conv and
linear weights. Iterative: five calls, each removing a fraction γ of the weights still
unpruned (PyTorch's ``PruningContainer`` semantics), so the final sparsity is 1 − (1 − γ)^5:
γ = 0.13 → 50.2 %, 0.243 → 75.1 %, 0.369 → 90.0 %.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """A named pruning schedule: ``steps`` global L1 calls of ``amount`` (fraction 0–1 of what remains)."""

    name: str
    method: str
    target: float
    amount: float
    steps: int

    @property
    def final_fraction(self) -> float:
        """Fraction 0–1 of weights pruned after all steps, ignoring per-step rounding."""
        return 1.0 - (1.0 - self.amount) ** self.steps


def one_shot(target: float) -> Schedule:
    return Schedule(f"one_shot_{round(target * 100)}", "one_shot", target, target, 1)


def iterative(target: float, amount: float, steps: int = 5) -> Schedule:
    return Schedule(f"iterative_{round(target * 100)}", "iterative", target, amount, steps)


REPORT_SCHEDULES: tuple[Schedule, ...] = (
    one_shot(0.50),
    one_shot(0.75),
    one_shot(0.90),
    iterative(0.50, 0.13),
    iterative(0.75, 0.243),
    iterative(0.90, 0.369),
)

# Top-1 test accuracy (%) the source report gives, on CIFAR-10 with 9,984 of its 10,000 test
# images (its loader dropped the last 16). Quoted, not measured here.
REPORT_ACCURACY_CIFAR10: dict[str, float] = {
    "unpruned": 93.069,
    "one_shot_50": 93.089,
    "one_shot_75": 93.029,
    "one_shot_90": 92.528,
    "iterative_50": 93.089,
    "iterative_75": 92.989,
    "iterative_90": 92.538,
}
REPORT_TEST_IMAGES = 9984

CHECKPOINT_NAMES: tuple[str, ...] = tuple(s.name for s in REPORT_SCHEDULES)


def custom_schedules(targets: list[float], steps: int) -> tuple[Schedule, ...]:
    """One-shot and ``steps``-step iterative schedules reaching each target (fraction in [0, 1)).

    The per-step amount is 1 − (1 − target)^(1/steps), as the report derived 13 %, 24.3 %, 36.9 %.
    """
    if steps < 1:
        raise ValueError(f"iterative step count must be ≥ 1, got {steps}")
    out: list[Schedule] = []
    for t in targets:
        if not 0.0 <= t < 1.0:
            raise ValueError(f"sparsity {t} is outside [0, 1)")
        out.append(one_shot(t))
    for t in targets:
        out.append(iterative(t, 1.0 - (1.0 - t) ** (1.0 / steps), steps))
    return tuple(out)


def expected_zeros(schedule: Schedule, total: int) -> int:
    """Exact number of pruned weights PyTorch produces: each step prunes round(amount · remaining)."""
    zeros = 0
    for _ in range(schedule.steps):
        zeros += round(schedule.amount * (total - zeros))
    return zeros


def schedule_by_name(name: str) -> Schedule:
    for s in REPORT_SCHEDULES:
        if s.name == name:
            return s
    raise KeyError(name)


# Every model the harness measures: the source and the six checkpoints, in report order.
MODELS: tuple[str, ...] = ("unpruned", *CHECKPOINT_NAMES)


def target_sparsity(name: str) -> float:
    """The target sparsity (fraction 0–1) a model name stands for: 0 for the unpruned model."""
    return 0.0 if name == "unpruned" else schedule_by_name(name).target
