#!/usr/bin/env bash
# The committed mnist5k table (benchmarks/results/mnist5k/results.*), computed by LANES bench processes of one
# thread each that share one cache (OUT/cells, OUT/sets) and pull cells from a queue, cheapest first, then
# assembled by the plain bench command with --cached-only. Resumable: rerun it and finished cells are read back.
# Jobs of one method hold a lock on it, so two lanes never build the same synthesis seed's set at once.
#   bash benchmarks/mnist5k_table.sh [OUT=runs/bench] [LANES=2]
set -u
OUT=${1:-runs/bench}
LANES=${2:-2}
DSCO=${DSCO:-.venv/bin/dsco}
MODEL_BASED="diffusion dsco d4m mgd3 dsco-datafree igd minimax d3hr"
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
Q=$OUT/queue.txt
{
  # real selection first: it makes the full-data cell and the teacher every later cell needs
  echo "--methods random --ipc 1,10,50"
  echo "--methods herding,kcenter --ipc 1,10,50"
  for ipc in 1 10; do for m in $MODEL_BASED; do echo "--methods $m --ipc $ipc --synthesis-seeds 3"; done; done
  echo "--methods dm --ipc 1,10"
  for m in $MODEL_BASED; do echo "--methods $m --ipc 50 --synthesis-seeds 2"; done
  echo "--methods dm --ipc 50"
  for m in $MODEL_BASED; do echo "--methods $m --ipc 50 --synthesis-seeds 3"; done
  echo "--methods diffusion --ipc 1 --generator-samples 100"
  echo "--methods dsco --ipc 10 --synthesis-seeds 3 --curve"  # the lossless curve, hard and teacher labels
} > "$Q"
# the full-data cell first, alone (every lane would otherwise compute it)
$DSCO bench --dataset mnist5k --runs 3 --out "$OUT" --generator-samples 0 --methods random --ipc 1 --no-lrs --bn-protocol none
. "$(dirname "$0")/lanes.sh"
run_lanes "$OUT" "$LANES"
$DSCO bench --dataset mnist5k --ipc 1,10,50 --synthesis-seeds 3 --runs 3 --out "$OUT" --curve --cached-only
