#!/usr/bin/env bash
# DsCo started from the real class's images (--anchor real at D4M's level, DiT t = 495) on a shift folder, IPC 10,
# synthesis seeds 0-2, each set trained 3 times with ConvNet-3 and with its BatchNorm variant: the row
# `dsco bench` has no method for, beside the bench's table of the same folder. Resumable (a finished cell is
# skipped); every cell writes OUT/anchor-s<seed>-<arch>.json (dsco evaluate --json).
#   bash benchmarks/anchor_cells.sh DATA_DIR OUT      # DATA_DIR holds train/ and test/
set -u
DATA=$1
OUT=$2
DSCO=${DSCO:-.venv/bin/dsco}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
D=(--dataset "$DATA/train" --test-dataset "$DATA/test")
for s in 0 1 2; do
  set_dir=$OUT/sets/anchor-s$s
  [ -f "$set_dir/manifest.json" ] || $DSCO concentrate "${D[@]}" --model src/dsco/assets/mnist5k --schedule short \
    --method dsco --ipc 10 --seed "$s" --anchor real --anchor-t 495 --preflight 0 --out "$set_dir" --resume >>"$OUT/log.txt" 2>&1
  for arch in convnet3 convnet3-bn; do
    [ -f "$OUT/anchor-s$s-$arch.json" ] || $DSCO evaluate "$set_dir" "${D[@]}" --arch "$arch" --runs 3 \
      --json "$OUT/anchor-s$s-$arch.json" >>"$OUT/log.txt" 2>&1
  done
  echo "$(date +%T) anchor-s$s $( [ -f "$OUT/anchor-s$s-convnet3-bn.json" ] && echo done || echo FAILED)" >>"$OUT/progress.log"
done
