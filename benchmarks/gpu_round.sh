#!/usr/bin/env bash
# One lent-GPU session, run from the repository root: the DiT-XL/2-sized step-cost and throughput benchmarks
# (plain vs NOpt, bf16 vs fp32), then every peer method of the registry at DiT-XL/2 size (bf16, IPC 10, two
# classes: the second class's seconds are the per-class cost once one-off work is done). Writes under $OUT.
#   OUT=out/gpu bash benchmarks/gpu_round.sh
# (The mnist5k generator candidates of issue 15 were trained by this script's earlier version: git log -p.)
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/log.txt" 2>&1
timeout 60 python3 benchmarks/step_cost.py --device cuda --ipc 10 --presets budget,reference \
  --out "$OUT/step_cost.json" >>"$OUT/log.txt" 2>&1
timeout 200 python3 benchmarks/gpu_throughput.py --device cuda --ipc 10,50 --methods ddim,nopt-budget,nopt-reference \
  --out "$OUT/gpu_throughput.json" >>"$OUT/log.txt" 2>&1
timeout 240 python3 benchmarks/gpu_throughput.py --device cuda --ipc 10 --dtypes bf16 --classes 2 \
  --methods diffusion,d4m,mgd3,minimax,igd,d3hr --out "$OUT/peer_throughput.json" 2>&1 | tr '\r' '\n' | grep -v "it/s\|s/it" >>"$OUT/log.txt"
ls -la "$OUT" >>"$OUT/log.txt"
