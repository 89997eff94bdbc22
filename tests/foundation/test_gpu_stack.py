"""One install for the GPU stack: .ci/install_gpu_stack.sh is what the image and the GPU checks run.

The Dockerfile's `gpu` target copies and runs it, bench/gpu_setup.sh runs it, its pins are
pyproject.toml's (and those quoted in the docs), and the shell and Dockerfile linters pass on it and
bite on a planted fault. There is no Docker engine and no GPU here: the Dockerfile is read as text,
and the script runs only as far as a CPU machine lets it (its pins, the MegaBlocks source fix, the
refusal of a CPU torch).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "install_gpu_stack.sh"
SCRIPT_REL = ".ci/install_gpu_stack.sh"
GPU_SETUP = ROOT / "bench" / "gpu_setup.sh"
DOCKERFILE = ROOT / "Dockerfile"
BIN = ROOT / ".venv" / "bin"
STACK = {"torch", "deepspeed", "megablocks", "stanford-stk", "grouped-gemm"}
# `megablocks==0.10.0`, `grouped_gemm==0.3.0`, `torch==2.13.0+cpu` as quoted in any text.
QUOTED_PIN = re.compile(
    r"(?<![\w-])(torch|deepspeed|megablocks|stanford[-_]stk|grouped[-_]gemm)==([0-9][\w.+]*)"
)


def script_pins(text: str) -> dict[str, str]:
    """Package -> version of every `NAME_VERSION=x` line of the script (NAME: the package)."""
    found = re.findall(r"^([A-Z][A-Z0-9_]*)_VERSION=(\S+)\s*$", text, flags=re.M)
    return {canonicalize_name(var.lower()): version for var, version in found}


def pyproject_pins(text: str) -> dict[str, SpecifierSet]:
    """Package -> specifier as pyproject.toml states it (base dependencies and every extra)."""
    project = tomllib.loads(text)["project"]
    lines = project["dependencies"] + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    out: dict[str, SpecifierSet] = {}
    for line in lines:
        req = Requirement(line)
        if str(req.specifier):
            out.setdefault(canonicalize_name(req.name), req.specifier)
    return out


def disagreements(script_text: str, pyproject_text: str) -> list[str]:
    """Every pin of the script that pyproject.toml lacks or states otherwise."""
    project = pyproject_pins(pyproject_text)
    out = []
    for name, version in sorted(script_pins(script_text).items()):
        spec = project.get(name)
        if spec is None:
            out.append(f"{SCRIPT_REL} pins {name}=={version}; pyproject.toml does not")
        elif str(spec) != f"=={version}":
            out.append(f"{SCRIPT_REL} pins {name}=={version}; pyproject.toml {name}{spec}")
    return out


def dockerfile_instructions(text: str) -> list[tuple[str, str, str]]:
    """(stage name, instruction, arguments) of each instruction, continuation lines joined."""
    out: list[tuple[str, str, str]] = []
    stage = ""
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # comments and blank lines, inside a continued instruction too
        pending += " " + line.strip().removesuffix("\\").strip()
        if line.rstrip().endswith("\\"):
            continue
        instruction, _, args = pending.strip().partition(" ")
        pending = ""
        if instruction.upper() == "FROM":
            stage = args.split(" AS ")[-1].strip() if " AS " in args else args
        out.append((stage, instruction.upper(), args.strip()))
    return out


def _run(*argv: str | Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


# ------------------------------------------------------------------------------- pins


def test_the_scripts_pins_are_pyprojects() -> None:
    pins = script_pins(SCRIPT.read_text())
    assert set(pins) == STACK, f"the script pins {sorted(pins)}; the stack is {sorted(STACK)}"
    assert disagreements(SCRIPT.read_text(), (ROOT / "pyproject.toml").read_text()) == []


def test_a_planted_disagreement_fails_the_check(tmp_path: Path) -> None:
    script, pyproject = tmp_path / "install_gpu_stack.sh", tmp_path / "pyproject.toml"
    shutil.copy(SCRIPT, script)
    shutil.copy(ROOT / "pyproject.toml", pyproject)
    script.write_text(script.read_text().replace("MEGABLOCKS_VERSION=0.10.0", "MEGABLOCKS_VERSION=0.10.1"))
    pyproject.write_text(
        pyproject.read_text()
        .replace('"deepspeed==0.19.8"', '"deepspeed==0.19.9"')
        .replace('"stanford-stk==0.7.1", ', "")
    )
    found = disagreements(script.read_text(), pyproject.read_text())
    assert found == [
        f"{SCRIPT_REL} pins deepspeed==0.19.8; pyproject.toml deepspeed==0.19.9",
        f"{SCRIPT_REL} pins megablocks==0.10.1; pyproject.toml megablocks==0.10.0",
        f"{SCRIPT_REL} pins stanford-stk==0.7.1; pyproject.toml does not",
    ]


def test_the_script_prints_the_pins_it_installs() -> None:
    result = _run("bash", SCRIPT, "pins")
    assert result.returncode == 0, result.stderr
    printed = dict(line.split("==") for line in result.stdout.split())
    assert {canonicalize_name(k): v for k, v in printed.items()} == script_pins(SCRIPT.read_text())


def test_every_quoted_version_of_the_stack_is_the_pin() -> None:
    """README, docs, bench notes and scripts, the model's install hint, the Dockerfile, the CPU
    constraints: a version of a stack package quoted anywhere is the script's (torch: its public part)."""
    pins = script_pins(SCRIPT.read_text())
    texts = [
        ROOT / "README.md",
        ROOT / "Dockerfile",
        ROOT / ".ci" / "constraints-cpu.txt",
        ROOT / "helm" / "sphinxx" / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "bench").glob("*.md"),
        *(ROOT / "bench").glob("*.sh"),
        *(ROOT / "model").glob("*.py"),
    ]
    quoted, wrong = 0, []
    for path in texts:
        for name, version in QUOTED_PIN.findall(path.read_text()):
            quoted += 1
            if Version(version).public != pins[canonicalize_name(name)]:
                wrong.append(f"{path.relative_to(ROOT)}: {name}=={version}")
    assert wrong == [], f"not the pins of {SCRIPT_REL}: {wrong}"
    assert quoted >= 8  # the README's and docs' install commands, the CPU torch: the scan sees them


# ------------------------------------------------------------------------------- who runs it


def test_the_dockerfiles_gpu_stage_copies_and_runs_the_script() -> None:
    instructions = [
        (i, args) for stage, i, args in dockerfile_instructions(DOCKERFILE.read_text()) if stage == "gpu"
    ]
    copies = [args.split() for i, args in instructions if i == "COPY" and SCRIPT_REL in args.split()]
    assert len(copies) == 1, f"the gpu stage copies {SCRIPT_REL} once: {copies}"
    dest = copies[0][-1]
    runs = [
        n
        for n, (i, args) in enumerate(instructions)
        if i == "RUN" and re.search(rf"bash {dest} install\b", args)
    ]
    assert len(runs) == 1, f"one RUN runs `bash {dest} install ...`"
    run = instructions[runs[0]][1]
    assert re.search(r"--torch-index \$\{TORCH_INDEX\}", run), "the image installs the pinned torch"
    copy_at = next(n for n, (i, args) in enumerate(instructions) if i == "COPY" and SCRIPT_REL in args)
    package_at = next(n for n, (i, args) in enumerate(instructions) if i == "RUN" and "/opt/sphinxx[" in args)
    assert copy_at < runs[0] < package_at, "the stack is installed before the package (which keeps its torch)"
    # The image installs no piece of the stack by itself, and has no fix of its own.
    for i, args in instructions:
        if i == "RUN":
            assert not QUOTED_PIN.search(args), f"the gpu stage pins a stack package itself: {args}"
    assert "debug_synchronous" not in DOCKERFILE.read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {".ci", ".ci/", SCRIPT_REL, ".ci/*"} & set(ignored), (
        "the script is left out of the build context"
    )


def test_the_images_cuda_is_the_torch_builds() -> None:
    text = DOCKERFILE.read_text()
    cuda = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)", text, flags=re.M)
    index = re.search(r"^ARG TORCH_INDEX=\S+/whl/cu(\d+)$", text, flags=re.M)
    assert cuda and index
    assert index.group(1) == cuda.group(1) + cuda.group(2), "torch's CUDA build and the CUDA image differ"


def test_gpu_setup_runs_the_script_and_keeps_no_stack_of_its_own() -> None:
    text = GPU_SETUP.read_text()
    var = re.search(rf'^(\w+)="\$ROOT/{re.escape(SCRIPT_REL)}"$', text, flags=re.M)
    assert var, f"bench/gpu_setup.sh names {SCRIPT_REL}"
    calls = re.findall(rf'bash "\${var.group(1)}" (\w+)([^\n]*)', text)
    assert ("fetch", ' "$WHL"') in calls
    assert ("install", ' --from "$WHL" --target "$SITE" "$@"') in calls
    assert not re.search(r"^\s*[A-Z_]*VERSION=", text, flags=re.M), "bench/gpu_setup.sh pins nothing itself"
    assert "debug_synchronous" not in text and "pip wheel" not in text
    assert "bench/gpu_setup.sh" in (ROOT / "bench" / "gpu_checks.sh").read_text()


def test_gpu_setup_reaches_the_scripts_torch_check(tmp_path: Path) -> None:
    """bench/gpu_setup.sh in a copy of the tree, with this CPU torch: the script refuses it, by name."""
    (tmp_path / "bench").mkdir()
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".whl" / "train").mkdir(parents=True)
    shutil.copy(GPU_SETUP, tmp_path / "bench")
    shutil.copy(SCRIPT, tmp_path / ".ci")
    site = tmp_path / "site"
    result = _run(
        "bash", tmp_path / "bench" / "gpu_setup.sh", "--no-build", PYTHON=str(BIN / "python"), SITE=str(site)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "torch 2.13.0+cpu, CUDA None, pinned 2.13.0" in result.stdout
    assert "is not a CUDA build: the GPU stack needs one" in result.stderr
    assert list(site.iterdir()) == []  # nothing installed


# ------------------------------------------------------------------------------- the script itself


CUMSUM = """\
template <typename T>
void exclusive_cumsum(const torch::Tensor &x, torch::Tensor &out,
                      cudaStream_t stream, bool debug_synchronous = false) {
  CUDA_CALL(cub::DeviceScan::ExclusiveSum(nullptr, scratch_bytes, x.data_ptr<T>(), out.data_ptr<T>(),
                                          x.numel(),
                                          stream,
                                          debug_synchronous));
}
void inclusive_cumsum(const torch::Tensor &x, torch::Tensor &out,
                      cudaStream_t stream, bool debug_synchronous = false) {
  CUDA_CALL(cub::DeviceScan::InclusiveSum(nullptr, scratch_bytes, x.data_ptr<T>(), out.data_ptr<T>(),
                                          x.numel(), stream, debug_synchronous));
}
"""


def test_the_megablocks_fix_drops_the_removed_cub_argument(tmp_path: Path) -> None:
    header = tmp_path / "megablocks" / "csrc" / "cumsum.h"
    header.parent.mkdir(parents=True)
    header.write_text(CUMSUM)
    result = _run("bash", SCRIPT, "fix-megablocks", header.parents[1], PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    fixed = header.read_text()
    assert "stream,\n                                          debug_synchronous))" not in fixed
    assert fixed.count("stream));") == 2 and fixed.count("bool debug_synchronous = false") == 2
    # A second time (or a MegaBlocks release that moved on) finds no call: it says so and fails.
    again = _run("bash", SCRIPT, "fix-megablocks", header.parents[1], PYTHON=sys.executable)
    assert again.returncode != 0 and "expected 2 cub calls with debug_synchronous" in again.stderr


def test_the_built_packages_keep_our_torch() -> None:
    """MegaBlocks pins torch 2.7: its wheels install with --no-deps and build without isolation."""
    text = SCRIPT.read_text()
    installs = [line for line in text.splitlines() if '"${wheels[@]}"' in line and "pip" in line]
    assert installs and all("--no-deps" in line for line in installs), installs
    builds = [line for line in text.splitlines() if "-m pip wheel" in line]
    assert builds and all("--no-build-isolation" in line for line in builds), builds
    assert "DS_BUILD_OPS=0" in text


def test_the_script_passes_bash_n_and_shellcheck_which_bite(tmp_path: Path) -> None:
    for script in (SCRIPT, GPU_SETUP):
        assert _run("bash", "-n", script).returncode == 0
    result = _run(BIN / "shellcheck", SCRIPT, GPU_SETUP)
    assert result.returncode == 0, result.stdout
    planted = tmp_path / "planted.sh"
    planted.write_text("#!/usr/bin/env bash\nfiles=$(ls)\nrm $files\n")
    bad = _run(BIN / "shellcheck", planted)
    assert bad.returncode != 0 and "SC2086" in bad.stdout
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/usr/bin/env bash\nif true; then echo\n")
    assert _run("bash", "-n", broken).returncode != 0


def test_hadolint_passes_on_the_dockerfile_and_each_ignore_says_why(tmp_path: Path) -> None:
    result = _run(BIN / "hadolint", DOCKERFILE)
    assert result.returncode == 0, result.stdout
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [n for n, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert pragmas, "the Dockerfile ignores no rule: drop this check's reason test"
    for n in pragmas:
        rule = lines[n].removeprefix("# hadolint ignore=")
        assert rule in lines[n - 1] or rule in lines[n - 2], (
            f"Dockerfile:{n + 1}: ignores {rule} without a reason"
        )
    # Without the inline ignores, hadolint reports the rule: the check bites.
    planted = tmp_path / "Dockerfile"
    planted.write_text("\n".join(line for line in lines if not line.startswith("# hadolint ignore=")) + "\n")
    bad = _run(BIN / "hadolint", planted)
    assert bad.returncode != 0 and "DL3008" in bad.stdout
