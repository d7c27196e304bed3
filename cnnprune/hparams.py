"""Configs as frozen dataclasses, and the command line generated from them: one source for both.

A field declared with :func:`opt` carries its flag, help text and parser in its metadata;
:func:`add_args` builds the argparse options from the fields, :func:`from_args` builds the config
back, and :func:`command_line` writes the flags of a config that differ from the defaults (the
report's reproduce line). The scheme follows open_lth's ``Hparams``. Checks that involve more than
one value live in each config's ``__post_init__`` and raise :class:`CnnpruneError`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

_MISSING = dataclasses.MISSING


def opt(default: Any = _MISSING, help: str = "", *, flag: str | None = None,  # noqa: A002 - argparse's name
        parse: Callable[[str], Any] | None = None, choices: Sequence[str] | None = None, negate: bool = False,
        factory: Callable[[], Any] | None = None, cli: bool = True) -> Any:
    """A config field with its command-line option.

    ``flag``: the option's name (default ``--field-name``); ``parse``: argparse type (also for
    comma lists, which are stored as tuples); ``negate``: a True-by-default boolean switched off
    by ``flag`` (``--no-onnx``); ``factory``: a default computed at construction; ``cli=False``:
    a field with no option (set by the program).
    """
    meta = {"help": help, "flag": flag, "parse": parse, "choices": tuple(choices) if choices else None,
            "negate": negate, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per CLI field of the dataclass ``cls`` (dest = field name)."""
    for f in cli_fields(cls):
        meta, default = f.metadata, default_of(f)
        shown = "" if default in (None, False, True) or meta.get("negate") else f" (default: {render(default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": (meta.get("help") or "") + shown}
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if meta.get("negate") else "store_true"
            kwargs["default"] = default
        else:
            kwargs["default"] = default
            if meta.get("parse"):
                kwargs["type"] = meta["parse"]
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        parser.add_argument(flag_of(f), **kwargs)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config ``cls`` built from parsed ``args`` (CLI fields), plus ``overrides``."""
    values = {f.name: getattr(args, f.name) for f in cli_fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def render(value: Any) -> str:
    """A value as it is written on the command line (tuples as comma lists)."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def command_line(config: Any, prefix: str, skip: Sequence[str] = ()) -> str:
    """``prefix`` followed by the flags of ``config`` that differ from its class's defaults."""
    parts = [prefix]
    for f in cli_fields(type(config)):
        value, default = getattr(config, f.name), default_of(f)
        if f.name in skip or _same(value, default):
            continue
        if isinstance(default, bool):
            parts.append(flag_of(f))
        else:
            parts.append(f"{flag_of(f)} {render(value)}")
    return " ".join(parts)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return tuple(a) == tuple(b)
    return a == b


def from_record(cls: type, record: dict) -> Any:
    """The config ``cls`` from its ``asdict`` form as stored in JSON (lists back to tuples;
    keys it no longer has ignored, keys it has gained take their defaults)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in names}
    return cls(**values)


# ------------------------------------------------------------------ parsers for opt(parse=...)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be ≥ {minimum}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _int_at_least(text, 0)


def positive_ints(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers ≥ 1, such as ``1,32``."""
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated integers such as 1,32") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be an integer ≥ 1")
    return values


def names(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated names."""
    return tuple(t.strip() for t in text.split(",") if t.strip())
