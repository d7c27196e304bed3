"""User-facing errors and the thin wrapper every CLI runs under.

Every command turns bad input into one line on stderr naming the file or argument and
what to do, and a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence


class CnnpruneError(Exception):
    """An error caused by the user's input; its message is the one line they see."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` and map failures to one line on stderr.

    Exit codes: 0 ok, 1 user error (CnnpruneError / missing file), 3 unexpected failure,
    130 interrupted.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        return main(args)
    except CnnpruneError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; finished outputs are kept, rerun to complete", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last line of defence for a one-line error
        if debug:
            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return 3


class CliParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage block), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)
