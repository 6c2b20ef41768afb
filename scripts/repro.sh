#!/usr/bin/env bash
# `make repro`: `dvc repro` with the run matrix on every core.
#
# DVC runs one stage at a time, and under the determinism flags one training keeps about
# 1.4 of 2 cores busy. DVC supports running independent stages from several `dvc repro`
# processes (it releases the repo lock while a stage's command runs), so this script:
#   1. reproduces everything upstream of the run matrix (env, fetch, analyze, normstats,
#      filter, expert) with one `dvc repro`;
#   2. runs the train@/eval@ pairs of the matrix in JOBS workers, each pair with
#      `dvc repro --single-item` (no upstream checks, so workers never wait on each other's
#      read locks), retrying while another worker holds the repo lock for a moment;
#   3. finishes with a plain `dvc repro`, which finds the matrix up to date, runs the paper,
#      and fails if anything is still stale.
# A run's bytes do not depend on what runs beside it (tests/test_train.py checks two runs
# side by side against one alone). JOBS=1 gives the plain sequential `dvc repro`.
# Each stage's wall time goes to results/repro_times.tsv (stage, worker, seconds; a stage DVC
# found up to date takes about a second): `benchmarks/repro_split.py` prints the split.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
DVC=(python3 -m uv run --locked dvc)
TIMES=results/repro_times.tsv

if [ "$JOBS" -le 1 ]; then
  exec timed 0 paper "${DVC[@]}" repro
fi

mkdir -p results
printf 'stage\tworker\tseconds\n' >"$TIMES"
timed() {  # timed WORKER STAGE COMMAND...: run, and log the stage's wall time
  local worker=$1 stage=$2 t0=$SECONDS
  shift 2
  "$@" || return 1
  printf '%s\t%s\t%s\n' "$stage" "$worker" "$((SECONDS - t0))" >>"$TIMES"
}

for stage in env fetch analyze normstats filter expert; do
  timed 0 "$stage" "${DVC[@]}" repro "$stage"
done

# with retries while another worker holds the repo lock (DVC takes it briefly around each stage)
repro_single() {
  local stage=$1 log
  log=$(mktemp)
  for _ in $(seq 1 600); do
    if "${DVC[@]}" repro --single-item "$stage" >"$log" 2>&1; then
      tail -n 2 "$log"
      rm -f "$log"
      return 0
    fi
    if ! grep -qiE 'unable to acquire lock|is busy' "$log"; then
      cat "$log" >&2
      rm -f "$log"
      return 1
    fi
    sleep 1
  done
  echo "repro: gave up waiting for the DVC lock on $stage" >&2
  return 1
}

mapfile -t runs < <("${DVC[@]}" stage list --name-only | sed -n 's/^train@//p')
worker() {
  local k=$1 i
  for ((i = k; i < ${#runs[@]}; i += JOBS)); do
    echo "repro [worker $k]: ${runs[i]}"
    timed "$k" "train@${runs[i]}" repro_single "train@${runs[i]}" || return 1
    timed "$k" "eval@${runs[i]}" repro_single "eval@${runs[i]}" || return 1
  done
}
pids=()
for ((k = 0; k < JOBS; k++)); do
  worker "$k" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" -eq 0 ] || { echo "repro: a matrix run failed (see above)" >&2; exit 1; }

timed 0 paper "${DVC[@]}" repro
