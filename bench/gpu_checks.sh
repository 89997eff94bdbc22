#!/usr/bin/env bash
# Every one-GPU check in one command, for the lent GPU machine (bench/GPU.md). From the repo root,
# with the ignored .whl/ folder carried (bench/gpu_setup.sh --download fills it):
#
#     bash bench/gpu_checks.sh
#
# 1. bench/gpu_setup.sh: MegaBlocks + grouped_gemm + stanford-stk into /tmp/site (built wheels
#    go to $OUT; put them in .whl/built/ and the next run skips the build).
# 2. bench/gpu_moe_local.py: MegaBlocks' local-expert parity under simulated EP 1/2/4/8, then the
#    Mixtral layer, MegaBlocks vs transformers eager, interleaved rounds (goal >= 3x).
# 3. bench/gpu_moe.py: the whole layer, every kernel vs loop and vs transformers, and timings.
#
# JSON lines go to $OUT/gpu_moe_local.jsonl and $OUT/gpu_moe.jsonl (stdout only), everything
# else to $OUT/checks.log. Each step has its own time limit, so one hung step cannot eat the lease;
# a failed setup still runs the checks (their MegaBlocks rows then say why they were skipped).
# Exit status: 0 when every step passed; else the last failing step's.
#
# CPU smoke of this script (what tests/moe runs): DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu_checks.sh
# skips the setup and runs both checks with --device cpu (tiny shapes).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/build/gpu-out}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
LOG="$OUT/checks.log"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
SETUP_S="${SETUP_S:-300}"   # build of both CUDA extensions on 16 cores, in parallel
LOCAL_S="${LOCAL_S:-150}"
LAYER_S="${LAYER_S:-120}"
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

if [[ "$DEVICE" == cpu ]]; then
    smoke=(--device cpu)
    layer_smoke=(--device cpu --tokens 64 --dim 64 --ffn-dim 128 --iters 1 --warmup 1)
else
    smoke=() layer_smoke=()
    { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
      "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } >>"$LOG" 2>&1
    step setup "$SETUP_S" "$LOG" bash bench/gpu_setup.sh
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
step gpu_moe_local "$LOCAL_S" "$OUT/gpu_moe_local.jsonl" "$PY" bench/gpu_moe_local.py "${smoke[@]}"
step gpu_moe "$LAYER_S" "$OUT/gpu_moe.jsonl" "$PY" bench/gpu_moe.py "${layer_smoke[@]}"

# The reply shows the end of the output: the summaries and any failed parity line.
echo "== results"
grep -h '"kind": "summary"\|"ok": false\|"error"\|skipped' "$OUT"/gpu_moe_local.jsonl "$OUT"/gpu_moe.jsonl 2>/dev/null | cut -c1-600
grep -h '"kind": "timing"' "$OUT"/gpu_moe_local.jsonl 2>/dev/null | cut -c1-300
tail -n 5 "$LOG"
exit "$status"
