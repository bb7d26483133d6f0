#!/usr/bin/env bash
# Rebuild the peers' rows of the committed mnist5k table (issue 20) without recomputing the methods whose code did
# not change: their cells are carried from the committed table (benchmarks/carry_cells.py; the bench refuses any
# whose settings changed), the peers' cells are computed by LANES one-thread bench processes pulling from a queue
# (cheapest first, a lock per method), and the plain bench command assembles the table with --cached-only.
# Resumable: rerun it and finished cells are read back.
#   bash benchmarks/mnist5k_peers.sh [OUT=runs/bench] [LANES=2]
set -u
OUT=${1:-runs/bench}
LANES=${2:-2}
DSCO=${DSCO:-.venv/bin/dsco}
PY=${PY:-.venv/bin/python}
TABLE=benchmarks/results/mnist5k/previous_peers/results.json
[ -f "$TABLE" ] || TABLE=benchmarks/results/mnist5k/results.json
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
$PY benchmarks/carry_cells.py "$TABLE" "$OUT" --methods dsco,dsco-datafree,random,herding,kcenter,dm,diffusion
Q=$OUT/queue.txt
[ -f "$Q" ] || {
  for ipc in 1 10; do for m in d4m mgd3 minimax igd; do echo "--methods $m --ipc $ipc"; done; done
  echo "--methods d3hr --ipc 1"
  for m in d4m mgd3 minimax igd; do echo "--methods $m --ipc 50"; done
  echo "--methods d3hr --ipc 10"
  echo "--methods d3hr --ipc 50"
} > "$Q"
# the teacher (the LRS column's teacher labels) first, alone: every lane would otherwise train it
[ -f "$OUT/teacher/config.json" ] || $DSCO train-teacher --dataset mnist5k --out "$OUT/teacher"
. "$(dirname "$0")/lanes.sh"
run_lanes "$OUT" "$LANES" --synthesis-seeds 3
$DSCO bench --dataset mnist5k --ipc 1,10,50 --synthesis-seeds 3 --runs 3 --out "$OUT" --cached-only
