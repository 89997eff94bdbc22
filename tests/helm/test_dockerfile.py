"""The Dockerfile agrees with pyproject.toml (no Docker engine here, so it is checked as text).

The image installs the package with extras that must exist, pins torch (CPU stage) / mlflow /
boto3 exactly as pyproject.toml does, and copies every folder that pyproject maps into the
`sphinxx` namespace (a missing one would install a package without, say, the operator). The `gpu`
stage's stack (CUDA torch, DeepSpeed, MegaBlocks) is .ci/install_gpu_stack.sh's, with its pins:
tests/foundation/test_gpu_stack.py.
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _pins() -> dict[str, SpecifierSet]:
    """Package -> specifier as pyproject states it (base dependencies and every extra)."""
    out: dict[str, SpecifierSet] = {}
    for line in PYPROJECT["project"]["dependencies"] + [r for reqs in EXTRAS.values() for r in reqs]:
        req = Requirement(line)
        if req.name != "sphinxx" and str(req.specifier):
            out.setdefault(req.name.lower(), req.specifier)
    return out


def _docker_requirements() -> list[Requirement]:
    """Every quoted `name==...`-style requirement in the Dockerfile's install lines."""
    reqs = []
    for text in re.findall(r'"([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?\s*[=<>!~][^"]*)"', DOCKERFILE):
        reqs.append(Requirement(text))
    return reqs


def test_the_extras_installed_exist_in_pyproject() -> None:
    installs = re.findall(r'"/opt/sphinxx\[([^\]]+)\]"', DOCKERFILE)
    assert installs, "the Dockerfile installs the package with extras"
    for extras in installs:
        names = [e.strip() for e in extras.split(",")]
        assert names == ["train", "operator"], names
        missing = [e for e in names if e not in EXTRAS]
        assert missing == [], f"extras {missing} are not in pyproject.toml [project.optional-dependencies]"


def test_pinned_versions_match_pyproject() -> None:
    pins = _pins()
    checked = set()
    for req in _docker_requirements():
        name = req.name.lower()
        if name not in pins:
            continue  # e.g. psycopg2-binary: image-only, not a package dependency
        assert req.specifier == pins[name], f"Dockerfile pins {req}, pyproject.toml {name}{pins[name]}"
        checked.add(name)
    # The pins that matter most must actually be checked, not vanish from the Dockerfile.
    assert {"torch", "mlflow", "boto3", "botocore"} <= checked, checked


def test_every_mapped_package_folder_is_copied() -> None:
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY\s+([A-Za-z_]+)/\s", DOCKERFILE, flags=re.M))
    assert folders <= copied, f"not copied into the image: {sorted(folders - copied)}"
    assert re.search(r"^COPY\s+pyproject\.toml README\.md\s", DOCKERFILE, flags=re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not folders & set(ignored), "a package folder is excluded by .dockerignore"


def test_python_version_satisfies_requires_python() -> None:
    version = re.search(r"^ARG PYTHON_VERSION=(\S+)", DOCKERFILE, flags=re.M).group(1)
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_images_run_as_the_non_root_uid_the_chart_expects() -> None:
    import yaml

    values = yaml.safe_load((ROOT / "helm" / "sphinxx" / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    for stage in stages:
        if stage.startswith("scratch"):
            continue
        assert re.search(rf"^USER {uid}$", stage, flags=re.M), stage.splitlines()[0]
