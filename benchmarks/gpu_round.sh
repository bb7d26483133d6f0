#!/usr/bin/env bash
# One lent-GPU session, run from the repository root: mnist5k generator candidates trained side by side
# (issue 15), then the DiT-XL/2-sized throughput and step-cost benchmarks. Writes everything under $OUT
# (snapshots in fp16 so the files fit the way back; the final models stay fp32).
#   OUT=out/gpu bash benchmarks/gpu_round.sh
set -u
OUT=${OUT:-out/gpu}
mkdir -p "$OUT" runs
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/log.txt" 2>&1
train() {  # name, seconds, then train-model options
  local name=$1 secs=$2; shift 2
  timeout "$secs" python3 -m dsco train-model --dataset mnist5k --out "runs/$name" --seed 0 --lr 1e-3 \
    --checkpoint-every 1000 --device cuda "$@" >"runs/$name.log" 2>&1
  echo "$name: exit $?" >>"$OUT/log.txt"
}
train gen-a 330 --steps 16000 --batch-size 64 --channels 32 64 64 --snapshot-steps 500 1000 2000 4000 8000 &
train gen-b 330 --steps 12000 --batch-size 128 --channels 48 96 96 --layers-per-block 2 --snapshot-steps 1000 2000 4000 8000 &
wait
for n in gen-a gen-b; do tr '\r' '\n' <"runs/$n.log" | tail -3 >>"$OUT/log.txt"; done
python3 - <<'PY'
from pathlib import Path
from safetensors.torch import load_file, save_file
for f in Path("runs").glob("gen-*/snapshots/*/model.safetensors"):
    save_file({k: v.half() for k, v in load_file(str(f)).items()}, str(f))
PY
for n in gen-a gen-b; do
  tar -C runs -cf "runs/$n.tar" --exclude optimizer.pt --exclude checkpoint/model.safetensors "$n"
  split -b 15M -d "runs/$n.tar" "$OUT/$n.tar.part"
done
timeout 200 python3 benchmarks/gpu_throughput.py --device cuda --ipc 10,50 --methods ddim,nopt-budget,nopt-reference \
  --out "$OUT/gpu_throughput.json" >>"$OUT/log.txt" 2>&1
timeout 60 python3 benchmarks/step_cost.py --device cuda --ipc 10 --presets budget,reference \
  --out "$OUT/step_cost.json" >>"$OUT/log.txt" 2>&1
ls -la "$OUT" >>"$OUT/log.txt"
