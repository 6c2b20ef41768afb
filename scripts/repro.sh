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
#      read locks), retrying while another worker holds the repo lock for a moment. Workers
#      take the next pair from one queue, longest first by the previous run's times, so that
#      no worker is left alone with a long (torch) run at the end. Workers are not pinned to
#      cores: it would be ~10% faster, but XLA partitions loops by the cores a process may use,
#      so a run on one core gives other bits than on two (README, Reproducibility);
#   3. finishes with a plain `dvc repro`, which finds the matrix up to date, runs the paper,
#      and fails if anything is still stale.
# A run's bytes do not depend on what runs beside it: tests/test_pipeline.py runs this script and
# plain `dvc repro` on a toy project and compares their dvc.lock files. JOBS=1 gives the plain
# sequential `dvc repro`; REPRO_DVC names the dvc command (default: the locked environment's).
# Each stage's wall time goes to results/repro_times.tsv (stage, worker, seconds; a stage DVC
# found up to date takes about a second): `benchmarks/repro_split.py` prints the split.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
read -ra DVC <<<"${REPRO_DVC:-python3 -m uv run --locked dvc}"
TIMES=results/repro_times.tsv

if [ "$JOBS" -le 1 ]; then
  exec "${DVC[@]}" repro
fi

# The matrix runs longest pair first by the last run's times (pairs it did not time first of all),
# read before this run's times replace them.
last_times=$TIMES
[ -f "$last_times" ] || last_times=/dev/null
mapfile -t runs < <(
  "${DVC[@]}" stage list --name-only | sed -n 's/^train@//p' |
    awk -F'\t' 'FILENAME != "-" { if ($1 ~ /@/) { sub(/^[a-z]+@/, "", $1); t[$1] += $3 }; next }
      { print (($1 in t) ? t[$1] : 1e9) "\t" $1 }' "$last_times" - |
    sort -t$'\t' -k1,1gr -s | cut -f2
)

mkdir -p results
printf 'stage\tworker\tseconds\n' >"$TIMES"
timed() {  # timed WORKER STAGE COMMAND...: run, and log the stage's wall time
  local worker=$1 stage=$2 t0=$SECONDS
  shift 2
  "$@" || return 1
  printf '%s\t%s\t%s\n' "$stage" "$worker" "$((SECONDS - t0))" >>"$TIMES"
}

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

# A queue the workers share: `take` prints the next index (flock keeps two workers off one item).
queue=$(mktemp)
trap 'rm -f "$queue" "$queue.lock"' EXIT
take() {
  (
    flock 9
    local i
    i=$(cat "$queue")
    echo $((i + 1)) >"$queue"
    echo "$i"
  ) 9>"$queue.lock"
}

# run_jobs WORK ITEM...: JOBS workers call `WORK WORKER ITEM` on the items in order, each taking
# the next one when done.
run_jobs() {
  local work=$1 k status=0 pids=()
  shift
  local items=("$@")
  echo 0 >"$queue"
  worker() {
    local k=$1 i
    while i=$(take) && [ "$i" -lt ${#items[@]} ]; do
      "$work" "$k" "${items[i]}" || return 1
    done
  }
  for ((k = 0; k < JOBS; k++)); do
    worker "$k" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  return "$status"
}

stage_job() { timed "$1" "$2" repro_single "$2"; }
run_pair() {
  echo "repro [worker $1]: $2"
  timed "$1" "train@$2" repro_single "train@$2" && timed "$1" "eval@$2" repro_single "eval@$2"
}

# Upstream: fetch spreads its episodes over the cores itself; the stages reading its dataset
# are independent of each other.
for stage in env fetch expert; do
  timed 0 "$stage" "${DVC[@]}" repro "$stage"
done
run_jobs stage_job analyze normstats filter || { echo "repro: an upstream stage failed (see above)" >&2; exit 1; }

run_jobs run_pair "${runs[@]}" || { echo "repro: a matrix run failed (see above)" >&2; exit 1; }

timed 0 paper "${DVC[@]}" repro
