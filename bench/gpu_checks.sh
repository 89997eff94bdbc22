#!/usr/bin/env bash
# The one-GPU checks in one command, for the lent GPU machine (bench/GPU.md). From the repo root,
# with the ignored .whl/ folder carried (bench/gpu_setup.sh --download fills it):
#
#     bash bench/gpu_checks.sh          # the MoE kernels (mode `moe`, the default), about 6 minutes
#     bash bench/gpu_checks.sh train    # the job's training path through DeepSpeed, about 4 minutes
#
# Mode `moe`:
# 1. bench/gpu_setup.sh: the image's GPU stack by .ci/install_gpu_stack.sh (MegaBlocks +
#    grouped_gemm + stanford-stk, built with the CUDA 13 fix, and DeepSpeed with .whl/train/'s
#    dependencies) into /tmp/site (built wheels go to $OUT; put them in .whl/built/ and the next run
#    skips the build).
# 2. bench/gpu_moe_local.py: MegaBlocks' local-expert parity under simulated EP 1/2/4/8, then the
#    Mixtral layer, MegaBlocks vs transformers eager, interleaved rounds (goal >= 3x).
# 3. bench/gpu_moe.py: the whole layer, every kernel vs loop and vs transformers, and timings.
# JSON lines go to $OUT/gpu_moe_local.jsonl and $OUT/gpu_moe.jsonl.
#
# Mode `train`:
# 1. bench/gpu_setup.sh --no-build: DeepSpeed and its dependencies, and the MegaBlocks wheels of
#    .whl/built/ if there (no build: without them Mixtral's MoE layers run `grouped`, and say so).
# 2. bench/gpu_train.py --flavor tinyllama-1.1b: the job's loop, ZeRO-2, bf16, synthetic data.
# 3. bench/gpu_train.py --flavor mixtral-8x7b: the same for a 3-layer Mixtral (8 experts, top-2).
# JSON lines go to $OUT/gpu_train_tinyllama.jsonl and $OUT/gpu_train_mixtral.jsonl.
#
# Stdout of each check is JSON lines only; everything else goes to $OUT/checks.log. Each step has
# its own time limit, so one hung step cannot eat the lease; a failed setup still runs the checks
# (their MegaBlocks rows then say why they were skipped). Exit status: 0 when every step passed;
# else the last failing step's.
#
# CPU smoke of this script (what tests/moe and tests/jobs run): DEVICE=cpu PYTHON=.venv/bin/python
# bash bench/gpu_checks.sh [train] skips the setup and runs the checks with --device cpu (tiny
# shapes; the debug and debug-moe flavors in mode `train`).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:-$ROOT/build/gpu-out}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
LOG="$OUT/checks.log"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
MODE="${1:-moe}"
SETUP_S="${SETUP_S:-300}"   # build of both CUDA extensions on 16 cores, in parallel
LOCAL_S="${LOCAL_S:-150}"
LAYER_S="${LAYER_S:-120}"
# Mode train: wheels only (no build), then each model: synthetic data, build on the GPU,
# DeepSpeed's setup, 3 + 12 steps. --max-seconds ends the measurement in time for the summary.
TRAIN_SETUP_S="${TRAIN_SETUP_S:-90}"
TINY_S="${TINY_S:-150}"
MOE_S="${MOE_S:-180}"
status=0

step() {  # step NAME SECONDS OUTFILE CMD...: run with a limit, stdout to OUTFILE (or the log)
    local name="$1" limit="$2" out="$3" rc
    shift 3
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s)" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >>"$out" 2>>"$LOG"
    rc=$?
    echo "== $name: exit $rc" | tee -a "$LOG"
    if [[ $rc -ne 0 ]]; then status=$rc; fi
}

if [[ "$MODE" != moe && "$MODE" != train ]]; then
    echo "usage: bash bench/gpu_checks.sh [moe|train]" >&2
    exit 2
fi
if [[ "$DEVICE" == cpu ]]; then
    smoke=(--device cpu)
    layer_smoke=(--device cpu --tokens 64 --dim 64 --ffn-dim 128 --iters 1 --warmup 1)
    tiny=(--flavor debug) moe=(--flavor debug-moe)
else
    smoke=() layer_smoke=()
    tiny=(--flavor tinyllama-1.1b --max-seconds 60) moe=(--flavor mixtral-8x7b --max-seconds 80)
    { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
      "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >>"$LOG" 2>&1
    if [[ "$MODE" == train ]]; then
        step setup "$TRAIN_SETUP_S" "$LOG" bash bench/gpu_setup.sh --no-build
    else
        step setup "$SETUP_S" "$LOG" bash bench/gpu_setup.sh
    fi
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if [[ "$MODE" == train ]]; then
    step gpu_train_tinyllama "$TINY_S" "$OUT/gpu_train_tinyllama.jsonl" "$PY" bench/gpu_train.py "${tiny[@]}" "${smoke[@]}"
    step gpu_train_mixtral "$MOE_S" "$OUT/gpu_train_mixtral.jsonl" "$PY" bench/gpu_train.py "${moe[@]}" "${smoke[@]}"
    echo "== results"
    grep -h '"kind": "env"\|"kind": "summary"\|"kind": "error"' "$OUT"/gpu_train_*.jsonl 2>/dev/null | cut -c1-1500
    grep -h '"kind": "config"' "$OUT"/gpu_train_*.jsonl 2>/dev/null | cut -c1-400
    tail -n 12 "$LOG"
    exit "$status"
fi
step gpu_moe_local "$LOCAL_S" "$OUT/gpu_moe_local.jsonl" "$PY" bench/gpu_moe_local.py "${smoke[@]}"
step gpu_moe "$LAYER_S" "$OUT/gpu_moe.jsonl" "$PY" bench/gpu_moe.py "${layer_smoke[@]}"

# The reply shows the end of the output: the summaries and any failed parity line.
echo "== results"
grep -h '"kind": "summary"\|"ok": false\|"error"\|skipped' "$OUT"/gpu_moe_local.jsonl "$OUT"/gpu_moe.jsonl 2>/dev/null | cut -c1-600
grep -h '"kind": "timing"' "$OUT"/gpu_moe_local.jsonl 2>/dev/null | cut -c1-300
tail -n 5 "$LOG"
exit "$status"
