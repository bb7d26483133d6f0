#!/usr/bin/env bash
# Every method on a domain shift, as the mnist5k table: `dsco bench` on the shifted folder with the shipped mnist5k
# generator, NOpt's short preset, ConvNet-3 and its BatchNorm variant, three synthesis seeds per model-based cell,
# and the lossless curve (hard and teacher labels; Doping as it runs by default on a folder). SHIFT picks the data:
# digits (benchmarks/digits_shift.py, IPC 1, 10, 50) or printed (benchmarks/printed_shift.py, IPC 1 and 10).
# LANES one-thread bench processes share OUT's cache and pull jobs from a queue, most needed first; resumable:
# rerun it and finished cells are read back. Assembled into benchmarks/results/domain_shift/<bench|printed>/.
#   [SHIFT=digits|printed] bash benchmarks/domain_shift_bench.sh [OUT=runs/shift-bench] [LANES=2]
set -u
OUT=${1:-runs/shift-bench}
LANES=${2:-2}
DSCO=${DSCO:-.venv/bin/dsco}
PY=${PY:-.venv/bin/python}
MODEL_BASED="diffusion dsco d4m mgd3 dsco-datafree igd minimax d3hr"
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
case ${SHIFT:-digits} in
  digits) DIG=runs/shift/digits; BUILD=digits_shift.py; RESULTS=benchmarks/results/domain_shift/bench; IPCS=1,10,50 ;;
  printed) DIG=runs/shift/printed; BUILD=printed_shift.py; RESULTS=benchmarks/results/domain_shift/printed; IPCS=1,10 ;;
  *) echo "SHIFT is digits or printed" >&2; exit 2 ;;
esac
[ -d "$DIG/train" ] || $PY "benchmarks/$BUILD" --out "$DIG"
MODEL=src/dsco/assets/mnist5k  # the shipped generator (the path the cached cells record)
COMMON=(--dataset "$DIG/train" --test-dataset "$DIG/test" --model "$MODEL" --schedule short --d3hr-candidates 100000 --no-lrs)
Q=$OUT/queue.txt
{
  echo "--methods random,herding,kcenter,dm --ipc $IPCS"
  for m in $MODEL_BASED; do echo "--methods $m --ipc $IPCS --synthesis-seeds 1"; done
  for m in $MODEL_BASED; do echo "--methods $m --ipc 10 --synthesis-seeds 3"; done
  for m in $MODEL_BASED; do echo "--methods $m --ipc 1 --synthesis-seeds 3"; done
  # the lossless curve, hard and teacher labels (it holds dsco's lock: after the other dsco jobs of its stage)
  echo "--methods dsco --ipc 10 --synthesis-seeds 3 --curve"
  if [ "$IPCS" = 1,10,50 ]; then
    # IPC 50's later seeds, D3HR first (half an hour a set on one core), so the lanes end together
    for m in d3hr diffusion dsco d4m mgd3 dsco-datafree igd minimax; do echo "--methods $m --ipc 50 --synthesis-seeds 2"; done
    for m in diffusion dsco d4m d3hr mgd3 dsco-datafree igd minimax; do echo "--methods $m --ipc 50 --synthesis-seeds 3"; done
  fi
} > "$Q"
# the full-data cell and the teacher first, alone (every lane would otherwise compute them)
$DSCO bench "${COMMON[@]}" --runs 3 --out "$OUT" --generator-samples 0 --methods random --ipc 1 --bn-protocol none
. "$(dirname "$0")/lanes.sh"
run_lanes "$OUT" "$LANES" "${COMMON[@]}"
$DSCO bench "${COMMON[@]}" --ipc "$IPCS" --synthesis-seeds 3 --runs 3 --out "$OUT" --curve --cached-only \
  --generator-samples 0
mkdir -p "$RESULTS"
for f in results.json results.md accuracy_vs_ipc.png cost_vs_ipc.png lossless_curve.png samples_ipc10.png; do cp "$OUT/$f" "$RESULTS/"; done
