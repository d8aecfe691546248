#!/usr/bin/env bash
# One run on a GPU, under 10 minutes: correctness of every path, the CUDA tests, the cost
# model's predictions and the benchmark, each with a time limit of its own; every table is
# written to OUT (default ./gpu-results), the merged benchmark report to OUT/gpu.json (copy it
# to benchmarks/gpu.json for the "Large batches" page). Installs nothing: run it where torch,
# triton and this package (pip install -e .) are importable.
set -uo pipefail
out=${OUT:-gpu-results}
mkdir -p "$out"
here=$(dirname "$0")
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv > "$out/gpu.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$out/gpu.txt"
arch=$(python -c "import torch; a, b = torch.cuda.get_device_capability(); print(80 if a < 9 else 90)")
python "$here/gpu.py" --model --arch "$arch" > "$out/model.md" 2>&1
timeout "${CHECK_SECONDS:-120}" mibounds check --device cuda > "$out/check.txt" 2>&1
echo "check exit $?" >> "$out/gpu.txt"
timeout "${TEST_SECONDS:-60}" python -m pytest -q -p no:cacheprovider \
  tests/test_triton.py::test_triton_on_cuda_matches_cpu > "$out/cuda_test.txt" 2>&1
echo "cuda test exit $?" >> "$out/gpu.txt"
# the rows that matter most first: bfloat16 at CLIP's sizes, then N = 1,048,576, then float32
bench() {  # name, seconds, then gpu.py arguments
  local name=$1 seconds=$2
  shift 2
  timeout "$((seconds + 30))" python "$here/gpu.py" --device cuda --time-limit "$seconds" \
    --json "$out/$name.json" "$@" > "$out/$name.md" 2>&1
  echo "bench $name exit $?" >> "$out/gpu.txt"
}
bench bf16 "${BF16_SECONDS:-150}" --dtypes bfloat16 --sizes 16384 65536 --dims 128 512 1024
bench million "${MILLION_SECONDS:-60}" --dtypes bfloat16 --sizes 1048576 --dims 512 \
  --losses clip siglip
bench fp32 "${FP32_SECONDS:-60}" --dtypes float32 --sizes 65536 --dims 128 512
# per-call cost against OpenCLIP's losses (or plain dense ones) from N = 16 to 16384
timeout "${OVERHEAD_SECONDS:-45}" python "$here/overhead.py" --device cuda --calls 50 \
  --sizes 16,256,1024,4096,16384 --json "$out/overhead.json" > "$out/overhead.md" 2>&1
echo "overhead exit $?" >> "$out/gpu.txt"
python - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = [json.loads((out / f"{n}.json").read_text()) for n in ("bf16", "million", "fp32")
         if (out / f"{n}.json").exists()]
if parts:
    merged = dict(parts[0], rows=[r for p in parts for r in p["rows"]])
    (out / "gpu.json").write_text(json.dumps(merged, indent=1))
EOF
cat "$out/gpu.txt"
