#!/usr/bin/env bash
# The whole suite as three pytest processes side by side ("lanes"), for the 2-core CI machine.
#
# Most of the suite's time is single-core: one Ray job starting, one operator waiting on the API
# server, one server starting. One pytest uses about 40% of two cores. So the suite runs as
#   e2e       the end-to-end sweeps (tests/e2e: operator + KubeRay stand-in + Ray jobs), and the
#             job's resize tests (the tiny sweep's laptop run overlaps its cluster run)
#   training  the job's own multi-process runs (training, stops, checkpoints, evaluation)
#   rest      everything else (operator, storage, schema, model, sweep, data, ...)
# each with its own servers on free ports and its own Ray, so they share nothing but the machine.
# Every test runs exactly once: the first two lanes are lists of paths here, the rest lane is
# the suite without them; tests/foundation/test_lanes.py checks that.
#
# Usage: .ci/test_lanes.sh [PYTEST_ARGS...]   (options for every lane, e.g. -m 'not slow'; not paths)
# The e2e and training lanes write build/test-lane-<name>.log ($LANE_LOG_DIR) and are printed when
# they end; the rest streams live. The exit status is the first non-zero one (a lane that selected
# no tests, pytest's 5, counts as passing when another lane ran tests).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${BIN:-.venv/bin}

# Balanced by measured times: each lane is about a third of the suite's ~1,060 s in one pytest.
E2E_LANE=(
  tests/e2e
  tests/jobs/test_resize.py
)
TRAINING_LANE=(
  tests/jobs/test_train.py
  tests/jobs/test_stop.py
  tests/jobs/test_async_stop.py
  tests/jobs/checkpoint
  tests/jobs/test_gpu_train_bench.py
  tests/jobs/test_evaluation.py
  tests/jobs/test_benchmarks.py
  tests/jobs/test_loop.py
  tests/jobs/test_export.py
  tests/jobs/test_export_multimodal.py
)

log_dir=${LANE_LOG_DIR:-build}
mkdir -p "$log_dir"
ignores=()
for path in "${E2E_LANE[@]}" "${TRAINING_LANE[@]}"; do ignores+=("--ignore=$path"); done

start=$(date +%s)
echo "lanes: e2e (${E2E_LANE[*]}) -> $log_dir/test-lane-e2e.log"
echo "lanes: training (${TRAINING_LANE[*]}) -> $log_dir/test-lane-training.log; the rest below"
"$BIN/pytest" -p no:cacheprovider "$@" "${E2E_LANE[@]}" >"$log_dir/test-lane-e2e.log" 2>&1 &
e2e_pid=$!
"$BIN/pytest" -p no:cacheprovider "$@" "${TRAINING_LANE[@]}" >"$log_dir/test-lane-training.log" 2>&1 &
training_pid=$!
trap 'kill "$e2e_pid" "$training_pid" 2>/dev/null; exit 130' INT TERM
"$BIN/pytest" "$@" "${ignores[@]}"
rest_rc=$?
rest_done=$(($(date +%s) - start))
echo "lanes: the rest finished after ${rest_done} s"
wait "$training_pid"
training_rc=$?
training_done=$(($(date +%s) - start))
wait "$e2e_pid"
e2e_rc=$?
for lane in training e2e; do
  echo
  echo "================ $lane lane ($log_dir/test-lane-$lane.log) ================"
  cat "$log_dir/test-lane-$lane.log"
done
echo "lanes: rest rc=$rest_rc after ${rest_done} s; training rc=$training_rc after ${training_done} s;" \
  "e2e rc=$e2e_rc; wall $(($(date +%s) - start)) s"

# 5 = "no tests collected": fine for a lane as long as some lane ran tests.
status=0
all_empty=1
for rc in "$rest_rc" "$training_rc" "$e2e_rc"; do
  [ "$rc" -ne 5 ] && all_empty=0
  if [ "$status" -eq 0 ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=$rc; fi
done
[ "$all_empty" -eq 1 ] && exit 5
exit "$status"
