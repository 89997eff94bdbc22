#!/usr/bin/env bash
# shellcheck disable=SC2034  # the <NAME>_LANE arrays are read by name (lane_paths)
# The whole suite as three pytest processes side by side ("lanes"), for the 2-core CI machine.
#
# Most of the suite's time is single-core: one Ray job starting, one operator waiting on the API
# server, one server starting. One pytest uses about 40% of two cores. So the suite runs as
#   e2e       the end-to-end sweeps (tests/e2e: operator + KubeRay stand-in + Ray jobs), and the
#             job's resize tests
#   training  the job's own multi-process runs (training, stops, checkpoints, evaluation, the GPU
#             scripts' CPU smoke runs under torchrun)
#   rest      everything else (operator, storage, schema, model, sweep, data, ...)
# each with its own servers on free ports and its own Ray, so they share nothing but the machine.
# More lanes do not help: five (the job's runs and the operator's tests apart) took longer on the
# same machine (2026-12-07: the tiny sweep alone past 19 min, the training lane 983 s against
# 904 s): past three, the lanes' Ray jobs and model tests only take turns on the two cores.
# Every test runs exactly once: the named lanes are lists of paths here, the rest lane is the
# suite without them; tests/foundation/test_lanes.py checks that.
#
# Usage: .ci/test_lanes.sh [PYTEST_ARGS...]   (options for every lane, e.g. -m 'not slow'; not paths)
# The background lanes write build/test-lane-<name>.log ($LANE_LOG_DIR) and are printed when
# they end; the rest streams live. The exit status is the first non-zero one, in the order the
# lanes are printed (a lane that selected no tests, pytest's 5, counts as passing when another
# lane ran tests).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BIN=${BIN:-.venv/bin}

# Balanced by measured times (build/test-lane-*.log's slowest durations).
LANES=(e2e training)
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
  tests/moe/test_gpu_scripts.py
  tests/jobs/test_cost.py
  tests/jobs/test_tracking.py
)

lane_paths() {  # the paths of lane $1
  local -n paths="${1^^}_LANE"
  printf '%s\n' "${paths[@]}"
}

# One intra-op thread per test process: three lanes already keep both cores busy, and torch's
# second thread on these tiny tensors costs more CPU than it saves (tests/model: 28.5 user-s with
# two, 25.6 with one, on the idle machine). The jobs set their own (`parallel.cpus_per_worker`).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

log_dir=${LANE_LOG_DIR:-build}
mkdir -p "$log_dir"
ignores=()
for lane in "${LANES[@]}"; do
  while read -r path; do ignores+=("--ignore=$path"); done < <(lane_paths "$lane")
done

start=$(date +%s)
declare -A pid rc done_s
for lane in "${LANES[@]}"; do
  mapfile -t paths < <(lane_paths "$lane")
  echo "lanes: $lane (${paths[*]}) -> $log_dir/test-lane-$lane.log"
  "$BIN/pytest" -p no:cacheprovider "$@" "${paths[@]}" >"$log_dir/test-lane-$lane.log" 2>&1 &
  pid[$lane]=$!
done
echo "lanes: the rest below"
trap 'kill "${pid[@]}" 2>/dev/null; exit 130' INT TERM
"$BIN/pytest" "$@" "${ignores[@]}"
rc[rest]=$?
done_s[rest]=$(($(date +%s) - start))
echo "lanes: the rest finished after ${done_s[rest]} s"
for lane in "${LANES[@]}"; do
  wait "${pid[$lane]}"
  rc[$lane]=$?
  done_s[$lane]=$(($(date +%s) - start))
done
summary="lanes: rest rc=${rc[rest]} after ${done_s[rest]} s"
for lane in "${LANES[@]}"; do
  echo
  echo "================ $lane lane ($log_dir/test-lane-$lane.log) ================"
  cat "$log_dir/test-lane-$lane.log"
  summary+="; $lane rc=${rc[$lane]} after ${done_s[$lane]} s"
done
echo "$summary; wall $(($(date +%s) - start)) s"

# 5 = "no tests collected": fine for a lane as long as some lane ran tests.
status=0
all_empty=1
for lane in rest "${LANES[@]}"; do
  code=${rc[$lane]}
  [ "$code" -ne 5 ] && all_empty=0
  if [ "$status" -eq 0 ] && [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then status=$code; fi
done
[ "$all_empty" -eq 1 ] && exit 5
exit "$status"
