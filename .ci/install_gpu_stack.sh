#!/usr/bin/env bash
# The pinned GPU stack, one install for the image and for the GPU checks: torch's CUDA build,
# DeepSpeed, and MegaBlocks with stanford-stk and grouped_gemm built from source against that torch,
# with the source fix CUDA 13 needs. The Dockerfile's `gpu` target and bench/gpu_setup.sh (which
# bench/gpu_checks.sh runs, bench/GPU.md) both run this file, so a GPU check installs what the
# image installs, built the same way.
#
#   install_gpu_stack.sh install --torch-index URL
#       The image (network): torch from URL, then the rest, into the interpreter's environment.
#   install_gpu_stack.sh fetch DIR
#       A CPU machine with PyPI: every source and wheel the stack needs into DIR (kept if there):
#       DIR/megablocks-*.tar.gz, DIR/grouped_gemm-*.tar.gz, DIR/stanford_stk-*.whl,
#       DIR/train/deepspeed-*.whl.
#   install_gpu_stack.sh install --from DIR --target SITE [--no-build]
#       The lent GPU machine (no network, its own torch): everything from DIR, nothing resolved,
#       into SITE (pip --target). MegaBlocks wheels already built there (DIR/built/) are installed
#       as they are; else they are built here, unless --no-build (then MegaBlocks is skipped and
#       the MoE layers run the `grouped` kernel). Every wheel in DIR/train/ is installed: DeepSpeed's
#       and the dependency wheels a caller put beside it.
#   install_gpu_stack.sh pins
#       name==version of each pin below, one per line.
#   install_gpu_stack.sh fix-megablocks SRC
#       The CUDA 13 source fix alone, on an unpacked megablocks source tree SRC (`build` applies it).
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0: H100/H200), MAX_JOBS
# (default 8), OUT (when set, freshly built wheels are copied there).
#
# torch: with --torch-index the pin is installed and must be what imports; without it the torch
# already there is used (the lent GPU machine has its own, and nothing can be downloaded there), and
# a different version is reported, not refused. Either way it must be a CUDA build.
#
# DeepSpeed: an sdist with pure-Python code; its setup.py pre-compiles no op unless DS_BUILD_OPS=1.
# The job's path (ZeRO-1/2/3 with torch's AdamW as client optimizer, jobs/parallelize.py) uses no
# DeepSpeed op, and any other op is JIT-compiled on first use (nvcc and ninja are in the image), so
# the wheel is built with DS_BUILD_OPS=0 (py3-none-any) and is the same file everywhere. What its
# setup.py records of the building machine (e.g. accelerator "cpu" where no GPU is) is read only for
# pre-compiled ops; at run time DeepSpeed detects CUDA itself. No DeepSpeed run on a GPU is
# recorded in bench/results yet (`bash bench/gpu_checks.sh train`, bench/GPU.md, makes one).
#
# MegaBlocks, grouped_gemm and stanford-stk are sdist-only on PyPI; megablocks and grouped_gemm
# compile CUDA extensions against the installed torch, and their metadata pins torch 2.7.x, so they
# are installed with --no-deps and built with --no-build-isolation (resolving deps would replace
# torch; docs/moe.md, "Expert kernels"). Both take their target GPUs from TORCH_CUDA_ARCH_LIST when
# set, so no GPU is needed to build them (the image is built without one).
# The source fix: megablocks' csrc/cumsum.h passes cub's `debug_synchronous` argument, removed in
# CCCL 3 (CUDA 13); it is dropped before building (measured with nvcc 13.0). Older cub took it as a
# trailing argument with a default, so the call without it is valid there too. grouped_gemm 0.3.0
# (cuBLAS path, no GROUPED_GEMM_CUTLASS=1) and megablocks built and ran this way on an H200
# (torch 2.11.0+cu130, triton 3.6; bench/results/gpu_moe_h200.jsonl).
set -euo pipefail

# The pins, here only. Each equals pyproject.toml's (torch: extra `model`; deepspeed: extra `train`;
# megablocks, stanford-stk, grouped_gemm: extra `gpu`); tests/foundation/test_gpu_stack.py checks it.
TORCH_VERSION=2.13.0
DEEPSPEED_VERSION=0.19.8
MEGABLOCKS_VERSION=0.10.0
STANFORD_STK_VERSION=0.7.1
GROUPED_GEMM_VERSION=0.3.0

PY="${PYTHON:-python3}"

usage() {
    sed -n '8,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

absolute() {  # absolute DIR: the path of an existing folder, made absolute
    [[ -d "$1" ]] || { echo "no folder $1" >&2; exit 1; }
    (cd "$1" && pwd)
}

pins() {
    echo "torch==$TORCH_VERSION"
    echo "deepspeed==$DEEPSPEED_VERSION"
    echo "megablocks==$MEGABLOCKS_VERSION"
    echo "stanford-stk==$STANFORD_STK_VERSION"
    echo "grouped_gemm==$GROUPED_GEMM_VERSION"
}

fetch() {  # fetch DIR: needs a package index and a torch in $PY (a CPU one will do)
    local dir="$1" fake
    mkdir -p "$dir/train"
    # pip prepares metadata before it saves an sdist, and grouped_gemm's setup.py needs CUDA even for
    # that: a throwaway sitecustomize fakes a CUDA_HOME and a device capability for that pip only.
    fake="$(mktemp -d)"
    mkdir -p "$fake/cuda/lib64"
    cat >"$fake/sitecustomize.py" <<EOF
import torch.cuda, torch.utils.cpp_extension as ext
torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
ext.CUDA_HOME = "$fake/cuda"
EOF
    [[ -f "$dir/megablocks-$MEGABLOCKS_VERSION.tar.gz" ]] ||
        "$PY" -m pip download -q --no-deps --no-build-isolation -d "$dir" "megablocks==$MEGABLOCKS_VERSION"
    [[ -f "$dir/grouped_gemm-$GROUPED_GEMM_VERSION.tar.gz" ]] ||
        PYTHONPATH="$fake" "$PY" -m pip download -q --no-deps --no-build-isolation -d "$dir" \
            "grouped_gemm==$GROUPED_GEMM_VERSION"
    rm -rf "$fake"
    # Pure Python + Triton: a wheel built anywhere is the wheel.
    compgen -G "$dir/stanford_stk-$STANFORD_STK_VERSION-*.whl" >/dev/null ||
        "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "stanford-stk==$STANFORD_STK_VERSION"
    compgen -G "$dir/train/deepspeed-$DEEPSPEED_VERSION-*.whl" >/dev/null ||
        DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dir/train" \
            "deepspeed==$DEEPSPEED_VERSION"
}

fix_megablocks() {  # fix_megablocks SRC: the CUDA 13 fix of csrc/cumsum.h (see the top)
    "$PY" - "$1/csrc/cumsum.h" <<'EOF'
import pathlib, re, sys
p = pathlib.Path(sys.argv[1])
s, n = re.subn(r"stream,\s*debug_synchronous\)\)", "stream))", p.read_text())
assert n == 2, f"expected 2 cub calls with debug_synchronous in {p}, found {n}"
p.write_text(s)
EOF
}

build() {  # build DIR OUTDIR: the megablocks and grouped_gemm wheels, from DIR's sources (minutes)
    local dir="$1" out="$2" src pids=() pid
    src="$(mktemp -d)"
    tar -xzf "$dir/megablocks-$MEGABLOCKS_VERSION.tar.gz" -C "$src"
    fix_megablocks "$src/megablocks-$MEGABLOCKS_VERSION"
    # Each package compiles only one or two CUDA files, so ninja's MAX_JOBS gains little inside
    # one; the two packages build side by side instead.
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-8}"
    for pkg in "$src/megablocks-$MEGABLOCKS_VERSION" "$dir/grouped_gemm-$GROUPED_GEMM_VERSION.tar.gz"; do
        "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$out" "$pkg" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    rm -rf "$src"
    if [[ -n "${OUT:-}" ]]; then cp "$out"/*.whl "$OUT/"; fi
}

check_torch() {  # check_torch STRICT: a CUDA build; with STRICT=1 also the pinned version
    "$PY" - "$TORCH_VERSION" "$1" <<'EOF'
import sys
import torch
want, strict = sys.argv[1], sys.argv[2] == "1"
have = torch.__version__.split("+")[0]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, pinned {want}")
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is not a CUDA build: the GPU stack needs one")
if have != want:
    if strict:
        sys.exit(f"torch {torch.__version__} imports, but {want} is pinned")
    print(f"note: this machine's torch {have} is not the pinned {want}; the stack is built against it")
EOF
}

verify() {  # verify MEGABLOCKS(0|1): installed versions are the pins; imports where a GPU is
    "$PY" - "$1" "$DEEPSPEED_VERSION" "$MEGABLOCKS_VERSION" "$STANFORD_STK_VERSION" "$GROUPED_GEMM_VERSION" <<'EOF'
import importlib.metadata as md, sys
import torch
megablocks, *versions = sys.argv[1:]
names = ["deepspeed", "megablocks", "stanford-stk", "grouped_gemm"]
wanted = dict(zip(names, versions)) if megablocks == "1" else {"deepspeed": versions[0]}
found = {name: md.version(name) for name in wanted}
assert found == wanted, f"installed {found}, pinned {wanted}"
print("installed:", ", ".join(f"{k} {v}" for k, v in found.items()))
if not torch.cuda.is_available():
    print("no GPU here: the CUDA extensions are not imported")
elif megablocks == "1":
    import grouped_gemm, megablocks.layers.dmoe  # noqa: F401
    print("megablocks and grouped_gemm import")
EOF
}

install() {
    local index="" from="" target="" nobuild=0 built wheels=() ds
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --torch-index) index="$2"; shift 2 ;;
            --from) from="$(absolute "$2")"; shift 2 ;;
            --target) mkdir -p "$2"; target="$(absolute "$2")"; shift 2 ;;
            --no-build) nobuild=1; shift ;;
            *) usage ;;
        esac
    done
    cd /tmp  # never next to a checkout's operator/ folder (it shadows the standard library's)
    local pip=("$PY" -m pip install -q --no-input)
    if [[ -n "$target" ]]; then
        # A scratch site for one machine's checks: no bytecode written (each module compiles on import).
        pip+=(--no-compile --upgrade --target "$target")
        export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if [[ -n "$index" ]]; then "${pip[@]}" --index-url "$index" "torch==$TORCH_VERSION"; fi
    check_torch "$([[ -n "$index" ]] && echo 1 || echo 0)"
    local online=0
    if [[ -z "$from" ]]; then
        online=1
        # megablocks' own build requirement is setuptools < 79; ninja builds both extensions.
        "${pip[@]}" "setuptools<79" wheel ninja
        from="$(mktemp -d)"
        fetch "$from"
    fi
    ds="$(compgen -G "$from/train/deepspeed-$DEEPSPEED_VERSION-*.whl" || true)"
    if [[ -z "$ds" ]]; then
        echo "no $from/train/deepspeed-$DEEPSPEED_VERSION-*.whl: run \`install_gpu_stack.sh fetch $from\` first" >&2
        exit 1
    fi
    built="$from/built"
    if compgen -G "$built/megablocks-*.whl" >/dev/null && compgen -G "$built/grouped_gemm-*.whl" >/dev/null; then
        echo "MegaBlocks: the wheels of $built"
    elif [[ $nobuild == 1 ]]; then
        echo "no $built/ MegaBlocks wheels and --no-build: MegaBlocks skipped (MoE runs 'grouped')"
        built=""
    else
        built="$(mktemp -d)"
        build "$from" "$built"
    fi
    if [[ -n "$built" ]]; then wheels+=("$built"/*.whl "$from"/stanford_stk-"$STANFORD_STK_VERSION"-*.whl); fi
    if [[ $online == 1 ]]; then
        # Online: DeepSpeed's dependencies are resolved (torch is there and stays); MegaBlocks' are not.
        "${pip[@]}" "$ds"
        if [[ ${#wheels[@]} -gt 0 ]]; then "${pip[@]}" --no-deps "${wheels[@]}"; fi
    else
        # Offline: one install of every file, nothing resolved.
        "${pip[@]}" --no-index --no-deps "${wheels[@]}" "$from"/train/*.whl
    fi
    verify "$([[ -n "$built" ]] && echo 1 || echo 0)"
}

case "${1:-}" in
    pins) pins ;;
    fix-megablocks) [[ $# -eq 2 ]] || usage; fix_megablocks "$2" ;;
    fetch) [[ $# -eq 2 ]] || usage; mkdir -p "$2"; dir="$(absolute "$2")"; cd /tmp; fetch "$dir" ;;
    install) shift; install "$@" ;;
    *) usage ;;
esac
