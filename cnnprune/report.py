"""Write one run's ``results.json``, ``REPORT.md`` and PNG plots; ``python -m cnnprune.report``
re-renders them from a ``results.json``.

Every number in the report is read from ``results.json`` of the same run (:mod:`cnnprune.results`
assembles it); :mod:`cnnprune.analysis` derives the figures once, :mod:`cnnprune.claims` holds
the rules and thresholds, :mod:`cnnprune.markdown` and :mod:`cnnprune.plots` render.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cnnprune.analysis import Analysis, analyse
from cnnprune.errors import CliParser, CnnpruneError, add_debug_flag, run_cli
from cnnprune.fileio import write_json, write_text
from cnnprune.markdown import markdown
from cnnprune.plots import plots


def write_report(results: dict, folder: Path, analysis: Analysis | None = None) -> Path:
    """Write results.json, the plots and REPORT.md into ``folder`` (each atomically);
    ``analysis``: the results' analysis where the caller has made it already."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", results)
    a = analysis or analyse(results)
    path = folder / "REPORT.md"
    write_text(path, markdown(a, plots(a, folder)))
    return path


def read_results(path: Path) -> dict:
    if not path.is_file():
        raise CnnpruneError(f"--results {path} does not exist; run `bash run_bench.sh` first")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CnnpruneError(f"--results {path} is not valid JSON") from None
    if not isinstance(results, dict) or not {"models", "latency", "config"} <= set(results):
        raise CnnpruneError(f"--results {path} is not the results.json of a cnnprune run")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = CliParser(prog="python -m cnnprune.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="reports/results.json", help="results.json of a run")
    parser.add_argument("--out", default=None, help="folder for REPORT.md and plots (default: beside --results)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    path = Path(args.results)
    print(write_report(read_results(path), Path(args.out) if args.out else path.parent))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
