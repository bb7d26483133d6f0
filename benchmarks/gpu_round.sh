#!/usr/bin/env bash
# One lent-GPU session, run from the repository root (issue 23): the DiT-XL/2-sized step cost (bf16 model step,
# NOpt's iteration eager and from a CUDA graph, one class and ten at once), then throughput in bf16 with classes
# batched (--class-batch) and one at a time, plain sampling vs NOpt's reference and short schedules, then fp32,
# then plain sampling with torch.compile. Every benchmark writes its JSON after each cell, so a section stopped by
# its time limit keeps what it measured. Writes under $OUT.
#   OUT=out/gpu bash benchmarks/gpu_round.sh
# Wheels the device image lacks (diffusers, mlxtend, importlib_metadata) travel in .whl (device README).
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/log.txt" 2>&1
quiet() { tr '\r' '\n' | grep -v "it/s\|s/it" >>"$OUT/log.txt"; }
echo "== step cost" >>"$OUT/log.txt"
timeout 60 python3 benchmarks/step_cost.py --device cuda --bf16 --ipc 10 --presets reference,short --classes 1,10 \
  --out "$OUT/step_cost.json" 2>&1 | quiet
echo "== bf16 throughput" >>"$OUT/log.txt"
timeout 240 python3 benchmarks/gpu_throughput.py --device cuda --dtypes bf16 --ipc 10,50 --class-batch 10:10,10:1,50:4,50:1 \
  --methods plain,nopt-reference,nopt-short --out "$OUT/gpu_throughput.json" 2>&1 | quiet
echo "== fp32 throughput" >>"$OUT/log.txt"
timeout 120 python3 benchmarks/gpu_throughput.py --device cuda --dtypes fp32 --ipc 10,50 --class-batch 10:10,50:4 \
  --methods plain,nopt-reference --out "$OUT/gpu_throughput_fp32.json" 2>&1 | quiet
echo "== bf16 plain sampling, torch.compile" >>"$OUT/log.txt"
timeout 120 python3 benchmarks/gpu_throughput.py --device cuda --dtypes bf16 --ipc 50 --class-batch 50:4,50:8 --compile \
  --methods plain --out "$OUT/gpu_throughput_compile.json" 2>&1 | quiet
ls -la "$OUT" >>"$OUT/log.txt"
