#!/usr/bin/env bash
# One run on a GPU: correctness of every path, then the benchmark, each with a time limit of its
# own, tables written to OUT (default ./gpu-results). Installs nothing: run it where torch,
# triton and this package (pip install -e .) are importable.
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/gpu.txt"
timeout "${CHECK_SECONDS:-240}" mibounds check --device cuda > "$out/check.txt" 2>&1
echo "check exit $?" >> "$out/gpu.txt"
timeout "${TEST_SECONDS:-120}" python -m pytest -q -p no:cacheprovider \
  tests/test_triton.py::test_triton_on_cuda_matches_cpu > "$out/cuda_test.txt" 2>&1
echo "cuda test exit $?" >> "$out/gpu.txt"
timeout "${BENCH_SECONDS:-420}" python benchmarks/gpu.py --device cuda \
  --time-limit "${BENCH_LIMIT:-360}" --json "$out/gpu.json" > "$out/bench.md" 2>&1
echo "bench exit $?" >> "$out/gpu.txt"
cat "$out/gpu.txt"
