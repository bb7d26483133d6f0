#!/usr/bin/env bash
# Issue 24's first measurements, one set per cell (resumable: a finished cell is skipped):
#  - mnist5k (the generator's own data), IPC 10: DsCo started from real images (--anchor real, at D3HR's level and
#    at D4M's), synthesis seeds 0-2,
#    beside the committed table's DsCo and D4M rows;
#  - the digits shift (benchmarks/digits_shift.py: UCI digits the generator never saw), IPC 10, seed 0: plain
#    sampling, DsCo, DsCo --anchor real, D4M and random real images, each trained with ConvNet-3 (cpu-small) and
#    the BatchNorm ConvNet-3, 3 runs; and Doping at 10 / 20 / 40 % of the train split (the DsCo set's 100 images
#    + real ones): the authors' global clarity selection (--no-classwise), per class (the default on a folder),
#    and random real images of the same size.
# Every cell writes OUT/<name>.json (dsco evaluate --json); benchmarks/domain_shift_table.py assembles them.
#   bash benchmarks/domain_shift.sh [OUT=runs/shift]
set -u
OUT=${1:-runs/shift}
DSCO=${DSCO:-.venv/bin/dsco}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
DIG=$OUT/digits
[ -d "$DIG/train" ] || $PY benchmarks/digits_shift.py --out "$DIG"
D=(--dataset "$DIG/train" --test-dataset "$DIG/test")
M=(--model "$($PY -c 'from dsco.orchestrate import default_model_dir; print(default_model_dir("mnist5k"))')")  # the shipped generator
S=(--schedule short)  # a folder defaults to the reference schedule: days on a CPU; the short preset, as on mnist5k
cell() {  # name, then concentrate options (data options included); evaluates with each arch in ARCHS
  local name=$1; shift
  [ -f "$OUT/sets/$name/manifest.json" ] || $DSCO concentrate --out "$OUT/sets/$name" --preflight 0 "$@" --resume >>"$OUT/log.txt" 2>&1
  for arch in $ARCHS; do
    [ -f "$OUT/$name-$arch.json" ] || $DSCO evaluate "$OUT/sets/$name" "${EVAL[@]}" --arch "$arch" --runs 3 --json "$OUT/$name-$arch.json" >>"$OUT/log.txt" 2>&1
  done
  if [ -f "$OUT/sets/$name/manifest.json" ]; then echo "$(date +%T) $name done" >>"$OUT/progress.log"
  else echo "$(date +%T) $name FAILED (see $OUT/log.txt)" >>"$OUT/progress.log"; fi
}
ARCHS="convnet3"; EVAL=(--dataset mnist5k)
for s in 0 1 2; do cell "mnist5k-dsco-anchor-s$s" --dataset mnist5k --ipc 10 --seed "$s" --anchor real --anchor-t 600; done
ARCHS="convnet3 convnet3-bn"; EVAL=("${D[@]}")
cell digits-random "${D[@]}" --method random --ipc 10
cell digits-diffusion "${D[@]}" "${M[@]}" --method diffusion --ipc 10
cell digits-dsco "${D[@]}" "${M[@]}" "${S[@]}" --method dsco --ipc 10
cell digits-dsco-anchor "${D[@]}" "${M[@]}" "${S[@]}" --method dsco --ipc 10 --anchor real --anchor-t 600
cell digits-d4m "${D[@]}" "${M[@]}" --method d4m --ipc 10
ARCHS="convnet3"
for b in 0.1 0.2 0.4; do
  # the authors' global ranking and per-class ranking, both without the guard (on a folder it is on by default)
  cell "digits-doped-global-$b" "${D[@]}" --synthetic-set "$OUT/sets/digits-dsco" "${M[@]}" --ipc 10 --budget "$b" --no-classwise --no-doping-guard
  cell "digits-doped-classwise-$b" "${D[@]}" --synthetic-set "$OUT/sets/digits-dsco" "${M[@]}" --ipc 10 --budget "$b" --classwise --no-doping-guard
  # the doped set's size: 100 synthetic + the real share rounded down to an equal share a class, as --classwise does
  n=$($PY -c "c = round($b * 1437) - 100; print((100 + max(10, c // 10 * 10)) // 10)")
  cell "digits-random-$b" "${D[@]}" --method random --ipc "$n"
done
# the anchor at D4M's level (SD v1.5's img2img start, alpha_bar 0.082 = DiT's timestep 495) instead of D3HR's
ARCHS="convnet3"; EVAL=(--dataset mnist5k)
for s in 0 1 2; do cell "mnist5k-dsco-anchor495-s$s" --dataset mnist5k --ipc 10 --seed "$s" --anchor real --anchor-t 495; done
ARCHS="convnet3 convnet3-bn"; EVAL=("${D[@]}")
cell digits-dsco-anchor495 "${D[@]}" "${M[@]}" "${S[@]}" --method dsco --ipc 10 --anchor real --anchor-t 495
# more synthesis seeds for the digits shift's synthetic sets (the cells above are seed 0)
ARCHS="convnet3 convnet3-bn"; EVAL=("${D[@]}")
for s in 1 2; do
  cell "digits-dsco-anchor495-s$s" "${D[@]}" "${M[@]}" "${S[@]}" --method dsco --ipc 10 --seed "$s" --anchor real --anchor-t 495
  cell "digits-d4m-s$s" "${D[@]}" "${M[@]}" --method d4m --ipc 10 --seed "$s"
  cell "digits-dsco-s$s" "${D[@]}" "${M[@]}" "${S[@]}" --method dsco --ipc 10 --seed "$s"
  cell "digits-diffusion-s$s" "${D[@]}" "${M[@]}" --method diffusion --ipc 10 --seed "$s"
done
# Doping as it now runs by default on a folder: per class, with the guard (synthetic images kept only if they
# train as well as as many random real images)
ARCHS="convnet3"; EVAL=("${D[@]}")
for b in 0.1 0.2 0.4; do
  cell "digits-doped-default-$b" "${D[@]}" --synthetic-set "$OUT/sets/digits-dsco" "${M[@]}" --ipc 10 --budget "$b"
done
