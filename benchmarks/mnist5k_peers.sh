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
# the teacher (LRS column) first, alone: every lane would otherwise train it
$DSCO bench --dataset mnist5k --runs 3 --out "$OUT" --generator-samples 0 --synthesis-seeds 3 --methods random --ipc 1
lane() {
  while true; do
    job=$(flock "$OUT/queue.lock" bash -c "head -n1 '$Q'; sed -i 1d '$Q'")
    [ -z "$job" ] && break
    echo "$(date +%T) lane $1: $job" >> "$OUT/progress.log"
    method=$(echo "$job" | awk '{print $2}')
    flock "$OUT/$method.lock" $DSCO bench --dataset mnist5k --runs 3 --out "$OUT" --generator-samples 0 --synthesis-seeds 3 $job \
      >> "$OUT/lane$1.log" 2>&1 || echo "$(date +%T) lane $1 FAILED: $job" >> "$OUT/progress.log"
    echo "$(date +%T) lane $1 done: $job" >> "$OUT/progress.log"
  done
}
for i in $(seq "$LANES"); do lane "$i" & done
wait
$DSCO bench --dataset mnist5k --ipc 1,10,50 --synthesis-seeds 3 --runs 3 --out "$OUT" --cached-only
