#!/usr/bin/env bash
# Install what the GPU checks need on the lent GPU machine, which has no network: everything
# travels in the repo's ignored `.whl/` folder. The GPU stack itself (DeepSpeed, MegaBlocks with
# stanford-stk and grouped_gemm, the CUDA 13 source fix, the pins) is .ci/install_gpu_stack.sh's,
# the very script the Dockerfile's `gpu` target runs; this file adds only what the machine lacks
# for the training check (bench/gpu_train.py) besides: DeepSpeed's dependencies pydantic,
# pydantic-core, annotated-types, typing-inspection, typing-extensions, hjson, and the run
# config's omegaconf. The machine's own torch is used (nothing can be downloaded there; the
# image pins its own, and the install says when the two differ).
#
# 1. Here (CPU machine with PyPI), once:        bash bench/gpu_setup.sh --download
#    -> `.ci/install_gpu_stack.sh fetch .whl`: .whl/megablocks-0.10.0.tar.gz, .whl/grouped_gemm-0.3.0.tar.gz
#       (981 KB, CUTLASS headers inside), .whl/stanford_stk-0.7.1-py3-none-any.whl (pure Python +
#       Triton, built here), .whl/train/deepspeed-0.19.8-py3-none-any.whl (built here, DS_BUILD_OPS=0);
#       then cp312 manylinux wheels of the dependencies above into .whl/train/ (about 5 MB in all).
#       Files already there are kept (.whl/built/ too).
# 2. GPU machine (device `run`, carry [".whl"]), from the repo root: `bash bench/gpu_checks.sh`
#    or `bash bench/gpu_checks.sh train` (bench/GPU.md). This script alone:
#       bash bench/gpu_setup.sh [--no-build] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
#    = `.ci/install_gpu_stack.sh install --from .whl --target /tmp/site [--no-build]`. The first run
#    builds cp312 MegaBlocks and grouped_gemm wheels against the machine's torch (2.11.0+cu130,
#    nvcc 13.0) for sm_90 and copies them to $OUT; put those in .whl/built/ and later runs only
#    install them. With --no-build a missing .whl/built/ skips MegaBlocks (the MoE layers then run
#    the `grouped` kernel) instead of spending ~300 s on the build. Everything is installed with one
#    `pip install --no-index --no-deps --target /tmp/site`.
#
# The versions of the dependencies are the ones this checkout's .venv resolved (pyproject's train
# extra), one of each. typing-extensions travels because pydantic needs >= 4.16 and the machine's
# version is not known here; a newer one only adds names.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/.ci/install_gpu_stack.sh"
WHL="$ROOT/.whl"
SITE="${SITE:-/tmp/site}"
# Missing from the lent GPU machine's preinstalled Python packages:
# DeepSpeed's pydantic (and its own dependencies) and hjson; the run config's omegaconf.
TRAIN_DEPS=(pydantic pydantic-core annotated-types typing-inspection typing-extensions hjson omegaconf)
# Every path below is absolute. Run pip and python away from the repo root, where `python -m`
# would put our operator/ folder ahead of the standard library's `operator` (Makefile).
cd /tmp

download() {
    # Runs on a CPU machine with PyPI.
    local py="${PYTHON:-$ROOT/.venv/bin/python}" pins=() name version dupes
    PYTHON="$py" bash "$STACK" fetch "$WHL"
    for name in "${TRAIN_DEPS[@]}"; do
        version="$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"
        pins+=("$name==$version")
    done
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHL/train" "${pins[@]}"
    # One version of each: a second one would stop the whole install on the machine.
    dupes="$(find "$WHL/train" -name '*.whl' -printf '%f\n' | sed -E 's/-[0-9][^-]*-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
    if [[ -n "$dupes" ]]; then
        echo "two versions of: $dupes in $WHL/train; remove the older ones" >&2
        return 1
    fi
    ls -la "$WHL" "$WHL/train"
    du -sh "$WHL"
}

install_gpu() {
    PYTHON="${PYTHON:-python3}" bash "$STACK" install --from "$WHL" --target "$SITE" "$@"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "${PYTHON:-python3}" -c "import deepspeed, omegaconf, pydantic; print('deepspeed', deepspeed.__version__, 'pydantic', pydantic.VERSION, 'omegaconf', omegaconf.__version__)"
}

case "${1:-}" in
    --download) download ;;
    --no-build) install_gpu --no-build ;;
    "") install_gpu ;;
    *) echo "usage: bash bench/gpu_setup.sh [--download | --no-build]" >&2; exit 2 ;;
esac
