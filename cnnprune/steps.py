"""Steps that are redone only when what they depend on changes, with visible progress.

A :class:`Step` is one unit of work: its inputs (JSON-able values, such as the sha256 of the files
it reads), the package code it runs (whose sha256 joins the fingerprint, so a changed kernel
invalidates earlier timings), and the files it writes. A :class:`Ledger` is the JSON record of one
kind of step, item by item (a checkpoint, a model): the value each item produced and its seal
(fingerprint, sha256 of each output, seconds). It is rewritten atomically after every item, so an
interrupted run resumes with the items still missing, and an item is reused while its
fingerprint matches and its outputs are unchanged on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnprune.fileio import sha256_file, write_json

PACKAGE = Path(__file__).resolve().parent


def fingerprint(*parts: object) -> str:
    """sha256 of JSON-able ``parts`` (anything else by its ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def code_fingerprint(files: Sequence[str]) -> str:
    """sha256 over package files, named relative to the package (``csrc/winograd.c``)."""
    return fingerprint(*[sha256_file(PACKAGE / f) for f in files if (PACKAGE / f).is_file()])


@dataclass(frozen=True)
class Step:
    """One unit of work: what it depends on and what it writes."""

    name: str
    inputs: tuple = ()
    code: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()

    def key(self) -> str:
        return fingerprint(self.name, self.inputs, code_fingerprint(self.code))

    def current(self, seal: dict | None) -> bool:
        """True when ``seal`` was made with these inputs and code and every output is unchanged."""
        if not seal or seal.get("fingerprint") != self.key():
            return False
        recorded = seal.get("outputs", {})
        return all(p.is_file() and recorded.get(p.name) == sha256_file(p) for p in self.outputs)

    def seal(self, seconds: float) -> dict:
        return {"fingerprint": self.key(), "outputs": {p.name: sha256_file(p) for p in self.outputs},
                "seconds": round(seconds, 2)}


@dataclass
class Ledger:
    """The record of one kind of step: ``header`` fields, one value per item under ``section``, and
    each item's seal under ``steps``, in one JSON file written after every item."""

    path: Path
    section: str
    header: dict = field(default_factory=dict)
    fresh: bool = False
    write: bool = True      # False: compute and keep values in memory only (a non-zero rank under torchrun)
    reused: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        old = {} if self.fresh else _read_json(self.path)
        self._old_values = old.get(self.section, {}) if isinstance(old.get(self.section), dict) else {}
        self._old_seals = old.get("steps", {}) if isinstance(old.get("steps"), dict) else {}
        self.data: dict[str, Any] = {**self.header, self.section: {}, "steps": {}}

    def run(self, item: str, step: Step, work: Callable[[], Any]) -> Any:
        """The item's value: reused if its step is current, else computed by ``work`` and recorded."""
        seal = self._old_seals.get(item)
        if item in self._old_values and step.current(seal):
            value = self._old_values[item]
            self.reused.append(item)
        else:
            t0 = time.perf_counter()
            value = work()
            seal = step.seal(time.perf_counter() - t0) if self.write else {}
            self.ran.append(item)
        self.data[self.section][item] = value
        self.data["steps"][item] = seal
        if self.write:
            write_json(self.path, self.data)
        return value

    @property
    def seconds(self) -> float:
        """What the recorded items cost when they were computed (reused ones included)."""
        return sum(s.get("seconds", 0.0) for s in self.data["steps"].values())

    @property
    def all_reused(self) -> bool:
        return bool(self.reused) and not self.ran


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------ progress


class Progress:
    """A rich progress bar on stderr for the items of one step (silent when ``show`` is False).
    Where stderr is no terminal (a log file, CI), a bar cannot redraw: each item gets a line."""

    def __init__(self, show: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        console = Console(stderr=True)
        self._lines = show and not console.is_terminal
        self._console = console
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, disable=not show or self._lines,
                                 transient=False)

    @contextlib.contextmanager
    def task(self, label: str, total: int | None) -> Iterator[Callable[..., None]]:
        """A task of ``total`` items (None: not known yet); the yielded function ``start(item,
        total=None)`` starts the next item, by name, and may set the total."""
        with self._bar:
            task = self._bar.add_task(label, total=total)
            started = 0

            def start(item: str, new_total: int | None = None) -> None:
                nonlocal started, total
                if new_total is not None:
                    total = new_total
                    self._bar.update(task, total=new_total)
                self._bar.update(task, completed=started, description=f"{label}: {item}")
                started += 1
                if self._lines:
                    self._console.print(f"{label}: {item} ({started}/{total or '?'})", highlight=False)

            yield start
            self._bar.update(task, completed=total or started, description=label)
