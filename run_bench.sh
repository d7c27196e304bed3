#!/usr/bin/env bash
# The whole job on a fresh machine, offline: set up (once), prune, export, benchmark, evaluate,
# and write reports/REPORT.md, reports/results.json and the plots.
#   bash run_bench.sh                 # the embedded default (Fashion-MNIST ResNet18)
#   bash run_bench.sh --fresh         # redo every step
#   bash run_bench.sh --dataset cifar10 --data-dir DIR --checkpoint resnet18.pt   # the report's setting
#   bash run_bench.sh --help          # every option
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
stamp=".venv-installed"
[ -n "${VIRTUAL_ENV:-}" ] && stamp="$VIRTUAL_ENV/.cnnprune-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  export PIP_CONSTRAINT="$PWD/constraints.txt"
  python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
exec python -m cnnprune.pipeline "$@"
