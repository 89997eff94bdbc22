#!/usr/bin/env bash
# The whole suite as two pytest processes side by side ("lanes"), for the 2-core CI machine.
#
# Most of the suite's time is single-core: one Ray job, one operator waiting on the API server,
# one server starting. One pytest uses about 40% of two cores. The training lane (Ray jobs that
# train: the end-to-end sweeps and the job's own multi-worker runs) runs beside the rest (operator,
# storage, schema, model, sweep), each with its own servers on free ports and its own Ray, so
# they share nothing but the machine. Every test runs exactly once; the lane split is a list of
# paths here, and tests/foundation/test_lanes.py checks it covers the suite.
#
# Usage: .ci/test_lanes.sh [PYTEST_ARGS...]   (options for both lanes, e.g. -m 'not slow'; not paths)
# The training lane's output goes to build/test-lane-training.log ($LANE_LOG) and is printed when it ends;
# the rest streams live. The exit status is the first non-zero one (a lane that selected no
# tests, pytest's 5, counts as passing when the other lane ran tests).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

# Folders, files or single tests (node ids; the rest lane deselects those). Balanced by measured
# times: about 800 s beside about 780 s for the rest on the 2-core CI machine, run together.
TRAINING_LANE=(
  tests/e2e
  tests/jobs/test_train.py::test_moe_expert_parallel_trains_and_checkpoints
  tests/jobs/test_train.py::test_killed_worker_resumes_from_last_commit_in_the_same_mlflow_run
  tests/jobs/test_train.py::test_elastic_two_workers_then_one_matches_an_uninterrupted_run
)

log=${LANE_LOG:-build/test-lane-training.log}
mkdir -p "$(dirname "$log")"
ignores=()
for path in "${TRAINING_LANE[@]}"; do
  case "$path" in
    *::*) ignores+=("--deselect=$path") ;;
    *) ignores+=("--ignore=$path") ;;
  esac
done

start=$(date +%s)
echo "lanes: training lane (${TRAINING_LANE[*]}) -> $log; the rest below"
"$BIN/pytest" -p no:cacheprovider "$@" "${TRAINING_LANE[@]}" >"$log" 2>&1 &
training_pid=$!
trap 'kill "$training_pid" 2>/dev/null; exit 130' INT TERM
"$BIN/pytest" "$@" "${ignores[@]}"
rest_rc=$?
rest_done=$(($(date +%s) - start))
if kill -0 "$training_pid" 2>/dev/null; then
  echo "lanes: the rest finished after ${rest_done} s; waiting for the training lane ($log)"
fi
wait "$training_pid"
training_rc=$?
echo
echo "================ training lane ($log) ================"
cat "$log"
echo "lanes: rest rc=$rest_rc after ${rest_done} s; training rc=$training_rc; wall $(($(date +%s) - start)) s"

# 5 = "no tests collected": fine for one lane (a -k or -m that selects only the other's tests).
if [ "$rest_rc" -eq 5 ] && [ "$training_rc" -eq 5 ]; then exit 5; fi
[ "$rest_rc" -eq 5 ] && rest_rc=0
[ "$training_rc" -eq 5 ] && training_rc=0
[ "$rest_rc" -ne 0 ] && exit "$rest_rc"
exit "$training_rc"
