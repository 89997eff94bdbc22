#!/usr/bin/env bash
# Install MegaBlocks 0.10.0 (+ stanford-stk 0.7.1, grouped_gemm 0.3.0) on the lent GPU machine,
# which has no network: everything travels in the repo's ignored `.whl/` folder.
#
# 1. Here (CPU machine with PyPI), once:        bash bench/gpu_setup.sh --download
#    -> .whl/megablocks-0.10.0.tar.gz, .whl/grouped_gemm-0.3.0.tar.gz (981 KB, CUTLASS headers inside),
#       .whl/stanford_stk-0.7.1-py3-none-any.whl (pure Python + Triton, built here)
# 2. GPU machine (device `run`, carry [".whl"]), from the repo root: `bash bench/gpu_checks.sh`
#    (this setup, then every one-GPU check; bench/GPU.md). This script alone:
#       bash bench/gpu_setup.sh && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
#    The first run builds cp312 wheels against the machine's torch (2.11.0+cu130, nvcc 13.0) for
#    sm_90 and copies them to $OUT; put those in .whl/built/ and later runs only install them.
#
# Why a build at all: all three are sdist-only on PyPI; megablocks and grouped_gemm compile CUDA
# extensions against the installed torch, and their metadata pins torch 2.7.x, so they are
# installed with --no-deps --no-build-isolation (resolving deps would replace torch).
# Known incompatibility fixed here: megablocks' csrc/cumsum.h passes cub's `debug_synchronous`
# argument, removed in CCCL 3 (CUDA 13); we drop it before building (measured with nvcc 13.0).
# grouped_gemm 0.3.0 (cuBLAS path, no GROUPED_GEMM_CUTLASS=1) and megablocks built and ran this way
# once on an H200 (torch 2.11.0+cu130, triton 3.6; bench/results/gpu_moe_h200.jsonl).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHL="$ROOT/.whl"
SITE="${SITE:-/tmp/site}"
# Every path below is absolute. Run pip and python away from the repo root, where `python -m`
# would put our operator/ folder ahead of the standard library's `operator` (Makefile).
cd /tmp

download() {
    # Runs on a CPU machine with PyPI. grouped_gemm's setup.py needs CUDA even to write its
    # metadata (pip prepares metadata before saving an sdist), so a throwaway sitecustomize fakes
    # a CUDA_HOME and a device capability for that pip subprocess only.
    local py="${PYTHON:-$ROOT/.venv/bin/python}" fake
    mkdir -p "$WHL"
    fake="$(mktemp -d)"
    mkdir -p "$fake/cuda/lib64"
    cat >"$fake/sitecustomize.py" <<EOF
import torch.cuda, torch.utils.cpp_extension as ext
torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
ext.CUDA_HOME = "$fake/cuda"
EOF
    "$py" -m pip download --no-deps --no-build-isolation -d "$WHL" megablocks==0.10.0
    PYTHONPATH="$fake" "$py" -m pip download --no-deps --no-build-isolation -d "$WHL" grouped_gemm==0.3.0
    "$py" -m pip wheel --no-deps --no-build-isolation -w "$WHL" stanford-stk==0.7.1
    rm -rf "$fake"
    ls -la "$WHL"
}

install_gpu() {
    local py="${PYTHON:-python3}" build
    "$py" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHL"/stanford_stk-0.7.1-*.whl
    if compgen -G "$WHL/built/megablocks-*.whl" >/dev/null && compgen -G "$WHL/built/grouped_gemm-*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHL"/built/*.whl
    else
        build="$(mktemp -d)"
        tar -xzf "$WHL/megablocks-0.10.0.tar.gz" -C "$build"
        "$py" - "$build/megablocks-0.10.0/csrc/cumsum.h" <<'EOF'
import pathlib, re, sys
p = pathlib.Path(sys.argv[1])
s, n = re.subn(r"stream,\s*debug_synchronous\)\)", "stream))", p.read_text())
assert n == 2, f"expected 2 cub calls with debug_synchronous in {p}, found {n}"
p.write_text(s)
EOF
        # 9.0 = H100/H200. Each package compiles only one or two CUDA files, so ninja's MAX_JOBS
        # gains little inside one; the two packages build side by side instead.
        export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-8}"
        local pids=() pid
        for src in "$build/megablocks-0.10.0" "$WHL/grouped_gemm-0.3.0.tar.gz"; do
            "$py" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$build/wheels" "$src" &
            pids+=("$!")
        done
        for pid in "${pids[@]}"; do wait "$pid"; done
        "$py" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$build"/wheels/*.whl
        if [[ -n "${OUT:-}" ]]; then cp "$build"/wheels/*.whl "$OUT/"; fi
    fi
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$py" -c \
        "import torch, grouped_gemm, megablocks, megablocks.layers.dmoe; print('megablocks OK, torch', torch.__version__)"
}

if [[ "${1:-}" == "--download" ]]; then download; else install_gpu; fi
