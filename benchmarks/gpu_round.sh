#!/usr/bin/env bash
# One lent-GPU session, run from the repository root (issue 23), DiT-XL/2-sized throughput with classes batched
# (--class-batch): NOpt's reference at IPC 50, the feature net through torch.compile, plain sampling compiled at
# IPC 10, fp32, then the peers (batched where they batch). The previous round (step cost, feature_cost.py, bf16
# IPC 10) is in the committed JSON; `git log -p` has its script.
# Every benchmark writes its JSON after each cell, so a section stopped by its time limit keeps what it measured.
# Writes under $OUT. Run with carry [".whl"] and a timeout of ~560 s.
#   OUT=out/gpu bash benchmarks/gpu_round.sh
# Wheels the device image lacks travel in .whl (ignored by git); make them once here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 mlxtend==0.25.0 importlib_metadata==10.2.0
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
# The order is what the last round (gpu_throughput_h200.json) left unmeasured first.
echo "== bf16 throughput, IPC 50" >>"$OUT/log.txt"
timeout 200 python3 benchmarks/gpu_throughput.py --device cuda --dtypes bf16 --ipc 50 --class-batch 50:4 \
  --methods plain,nopt-reference,nopt-short --out "$OUT/gpu_throughput_ipc50.json" 2>&1 | quiet
echo "== the feature net's arithmetic with torch.compile (targets' features, one iteration of 1 and 10 classes)" >>"$OUT/log.txt"
timeout 80 python3 benchmarks/feature_cost.py --device cuda --compile --out "$OUT/feature_cost_compile.json" 2>&1 | quiet
echo "== bf16 plain sampling with torch.compile, IPC 10" >>"$OUT/log.txt"
timeout 100 python3 benchmarks/gpu_throughput.py --device cuda --dtypes bf16 --ipc 10 --class-batch 10:10 --compile \
  --methods plain --out "$OUT/gpu_throughput_compile.json" 2>&1 | quiet
echo "== fp32 throughput, IPC 10" >>"$OUT/log.txt"
timeout 90 python3 benchmarks/gpu_throughput.py --device cuda --dtypes fp32 --ipc 10 --class-batch 10:10 \
  --methods plain,nopt-reference --out "$OUT/gpu_throughput_fp32.json" 2>&1 | quiet
echo "== the peers, bf16, IPC 10, four classes batched where the method batches them (D3HR: 10^6 candidates)" >>"$OUT/log.txt"
timeout 80 python3 benchmarks/gpu_throughput.py --device cuda --dtypes bf16 --ipc 10 --classes 4 --class-batch 10:4 \
  --methods plain,d4m,mgd3,d3hr,minimax,igd --out "$OUT/peer_throughput.json" 2>&1 | quiet
ls -la "$OUT" >>"$OUT/log.txt"
