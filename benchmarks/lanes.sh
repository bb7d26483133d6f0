# Sourced by the table scripts: run_lanes OUT LANES [bench options...] runs LANES one-thread `dsco bench` processes
# that pull jobs ("--methods M --ipc I ...", one a line) from OUT/queue.txt until it is empty, sharing OUT's cell
# cache. A job holds a lock on its method, so two lanes never build the same synthesis seed's set at once.
run_lanes() {
  local out=$1 lanes=$2
  shift 2
  lane() {
    local job method
    while true; do
      job=$(flock "$out/queue.lock" bash -c "head -n1 '$out/queue.txt'; sed -i 1d '$out/queue.txt'")
      [ -z "$job" ] && break
      echo "$(date +%T) lane $1: $job" >> "$out/progress.log"
      method=$(echo "$job" | awk '{print $2}')
      # shellcheck disable=SC2086
      flock "$out/$method.lock" $DSCO bench --dataset mnist5k --runs 3 --out "$out" --generator-samples 0 "${@:2}" $job \
        >> "$out/lane$1.log" 2>&1 || echo "$(date +%T) lane $1 FAILED: $job" >> "$out/progress.log"
      echo "$(date +%T) lane $1 done: $job" >> "$out/progress.log"
    done
  }
  for i in $(seq "$lanes"); do lane "$i" "$@" & done
  wait
}
