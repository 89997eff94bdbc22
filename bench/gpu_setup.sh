#!/usr/bin/env bash
# Install what the GPU checks need on the lent GPU machine, which has no network: everything
# travels in the repo's ignored `.whl/` folder.
#
#   MegaBlocks 0.10.0 (+ stanford-stk 0.7.1, grouped_gemm 0.3.0): the MoE kernels.
#   DeepSpeed 0.19.8 (pyproject's pin) and what it and the run config need that the machine lacks
#   (pydantic, pydantic-core, annotated-types, typing-inspection, typing-extensions, hjson,
#   omegaconf): the job's training path (bench/gpu_train.py).
#
# 1. Here (CPU machine with PyPI), once:        bash bench/gpu_setup.sh --download
#    -> .whl/megablocks-0.10.0.tar.gz, .whl/grouped_gemm-0.3.0.tar.gz (981 KB, CUTLASS headers inside),
#       .whl/stanford_stk-0.7.1-py3-none-any.whl (pure Python + Triton, built here),
#       .whl/train/*.whl: deepspeed-0.19.8-py3-none-any.whl (built here) and cp312 manylinux
#       wheels of the others (about 5 MB in all). Files already there are kept (.whl/built/ too).
# 2. GPU machine (device `run`, carry [".whl"]), from the repo root: `bash bench/gpu_checks.sh`
#    or `bash bench/gpu_checks.sh train` (bench/GPU.md). This script alone:
#       bash bench/gpu_setup.sh [--no-build] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
#    The first run builds cp312 MegaBlocks and grouped_gemm wheels against the machine's torch
#    (2.11.0+cu130, nvcc 13.0) for sm_90 and copies them to $OUT; put those in .whl/built/ and
#    later runs only install them. With --no-build a missing .whl/built/ skips MegaBlocks (the
#    MoE layers then run the `grouped` kernel) instead of spending ~300 s on the build.
#    Everything is installed with one `pip install --no-index --no-deps --target /tmp/site`.
#
# Why a build at all: MegaBlocks, grouped_gemm and stanford-stk are sdist-only on PyPI; megablocks
# and grouped_gemm compile CUDA extensions against the installed torch, and their metadata pins
# torch 2.7.x, so they are installed with --no-deps --no-build-isolation (resolving deps would
# replace torch). Known incompatibility fixed here: megablocks' csrc/cumsum.h passes cub's
# `debug_synchronous` argument, removed in CCCL 3 (CUDA 13); we drop it before building (measured
# with nvcc 13.0). grouped_gemm 0.3.0 (cuBLAS path, no GROUPED_GEMM_CUTLASS=1) and megablocks built
# and ran this way once on an H200 (torch 2.11.0+cu130, triton 3.6; bench/results/gpu_moe_h200.jsonl).
#
# DeepSpeed is an sdist too, but a pure-Python one: its setup.py pre-compiles no op unless
# DS_BUILD_OPS=1 (the default on Linux is 0: ops are JIT-compiled on first use, and the job's path,
# ZeRO-2 with torch's AdamW on CUDA, uses none). So the wheel built here (DS_BUILD_OPS=0, py3-none-any)
# is the one the machine installs; what setup.py records of this machine (CPU torch, accelerator
# "cpu") is read only for pre-compiled ops, and at run time DeepSpeed detects CUDA itself. The
# versions of its dependencies are the ones this checkout's .venv resolved (pyproject's train
# extra), one of each. typing-extensions travels because pydantic needs >= 4.16 and the machine's
# version is not known here; a newer one only adds names.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHL="$ROOT/.whl"
SITE="${SITE:-/tmp/site}"
DEEPSPEED_VERSION=0.19.8
# Missing from the lent GPU machine's preinstalled Python packages:
# DeepSpeed's pydantic (and its own dependencies) and hjson; the run config's omegaconf.
TRAIN_DEPS=(pydantic pydantic-core annotated-types typing-inspection typing-extensions hjson omegaconf)
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
    [[ -f "$WHL/megablocks-0.10.0.tar.gz" ]] ||
        "$py" -m pip download --no-deps --no-build-isolation -d "$WHL" megablocks==0.10.0
    [[ -f "$WHL/grouped_gemm-0.3.0.tar.gz" ]] ||
        PYTHONPATH="$fake" "$py" -m pip download --no-deps --no-build-isolation -d "$WHL" grouped_gemm==0.3.0
    compgen -G "$WHL/stanford_stk-0.7.1-*.whl" >/dev/null ||
        "$py" -m pip wheel --no-deps --no-build-isolation -w "$WHL" stanford-stk==0.7.1
    rm -rf "$fake"
    download_train "$py"
    ls -la "$WHL" "$WHL/train"
    du -sh "$WHL"
}

download_train() {
    local py="$1" pins=() name version
    mkdir -p "$WHL/train"
    compgen -G "$WHL/train/deepspeed-$DEEPSPEED_VERSION-*.whl" >/dev/null ||
        DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$WHL/train" "deepspeed==$DEEPSPEED_VERSION"
    for name in "${TRAIN_DEPS[@]}"; do
        version="$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
        pins+=("$name==$version")
    done
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL/train" "${pins[@]}"
    # One version of each: a second one would stop the whole install on the machine.
    local dupes
    dupes="$(ls "$WHL/train" | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
    if [[ -n "$dupes" ]]; then
        echo "two versions of: $dupes in $WHL/train; remove the older ones" >&2
        return 1
    fi
}

build_megablocks() {
    # Builds the two CUDA wheels into $1 (minutes); copies them to $OUT.
    local py="$1" out="$2" build
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
        "$py" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$out" "$src" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    if [[ -n "${OUT:-}" ]]; then cp "$out"/*.whl "$OUT/"; fi
}

install_gpu() {
    local py="${PYTHON:-python3}" wheels=() megablocks=1
    if compgen -G "$WHL/built/megablocks-*.whl" >/dev/null && compgen -G "$WHL/built/grouped_gemm-*.whl" >/dev/null; then
        wheels+=("$WHL"/built/*.whl)
    elif [[ "${1:-}" == "--no-build" ]]; then
        echo "no .whl/built/ MegaBlocks wheels and --no-build: MegaBlocks skipped (MoE runs 'grouped')"
        megablocks=0
    else
        local built
        built="$(mktemp -d)"
        build_megablocks "$py" "$built"
        wheels+=("$built"/*.whl)
    fi
    if [[ $megablocks == 1 ]]; then wheels+=("$WHL"/stanford_stk-0.7.1-*.whl); fi
    if compgen -G "$WHL/train/*.whl" >/dev/null; then
        wheels+=("$WHL"/train/*.whl)
    else
        echo "no .whl/train/: DeepSpeed not installed (run bench/gpu_setup.sh --download on the CPU machine)"
    fi
    "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    if [[ $megablocks == 1 ]]; then
        "$py" -c "import torch, grouped_gemm, megablocks, megablocks.layers.dmoe; print('megablocks OK, torch', torch.__version__)"
    fi
    if compgen -G "$WHL/train/*.whl" >/dev/null; then
        "$py" -c "import deepspeed, omegaconf, pydantic; print('deepspeed', deepspeed.__version__, 'pydantic', pydantic.VERSION, 'omegaconf', omegaconf.__version__)"
    fi
}

if [[ "${1:-}" == "--download" ]]; then download; else install_gpu "${1:-}"; fi
