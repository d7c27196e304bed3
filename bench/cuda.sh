#!/usr/bin/env bash
# The CUDA half of the benchmarks, on a machine with an NVIDIA GPU and PyTorch already installed
# (torch >= 2.11, onnx, onnxruntime, pytest-benchmark): the GPU checks of the test suite, then
# `pytest bench` on CUDA only. Writes into OUT (default reports/cuda):
#   cuda_bench.json  pytest-benchmark JSON (every round kept) -> `bash run_bench.sh --cuda-bench FILE`
#   tests.log, bench.log, env.txt
#   bash bench/cuda.sh                       # defaults below
#   OUT=/tmp/x PASSES=1 bash bench/cuda.sh   # narrower
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-reports/cuda}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CNNPRUNE_CACHE="${CNNPRUNE_CACHE:-/tmp/cnnprune-cache}"
PY="${PYTHON:-python3}"
ART="${ART:-/tmp/cnnprune-artifacts}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" - <<'EOF'
import torch, onnxruntime
from cnnprune.cuda import cuda_info
print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
print(cuda_info())
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -p no:cacheprovider -o addopts="" ${TESTS:-\
  tests/test_cuda.py tests/test_sparse.py tests/test_prune.py tests/test_bench_smoke.py} >"$OUT/tests.log" 2>&1
echo "tests: exit $?"; tail -5 "$OUT/tests.log"
timeout "${BENCH_TIMEOUT:-420}" "$PY" -m pytest bench -q -p no:cacheprovider -o addopts="" \
  --bench-artifacts="$ART" --bench-devices=cuda --bench-engines=torch,cuda-graph,torch-csr \
  --bench-batches="${BATCHES:-1,32,256}" --bench-passes="${PASSES:-3}" --bench-rounds="${ROUNDS:-30}" \
  --benchmark-save-data --benchmark-json="$OUT/cuda_bench.json" >"$OUT/bench.log" 2>&1
echo "bench: exit $?"; tail -5 "$OUT/bench.log"
