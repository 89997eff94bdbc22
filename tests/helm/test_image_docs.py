"""What the docs say about building the image and pointing the chart at it holds.

Every `helm install` / `helm upgrade` that README.md, the chart's README, docs/ and the runbooks
quote sets only keys that values.yaml has, and renders (values.schema.json applied, as `helm install`
would). A document that quotes `docker build` builds the operator image and its GPU build
(`<tag>-gpu`, the Ray pods' default), pushes both, and installs the chart with that
`image.repository` and `image.tag`: rendered, the operator runs that image and hands the `-gpu`
one to the Ray pods.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART_DIR, ROOT
from .test_runbooks import SEPARATORS, commands

VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
DOCUMENTS = [
    ROOT / "README.md",
    CHART_DIR / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "ops_runbooks").glob("*.md")),
]


def argvs(text: str, tool: str) -> list[list[str]]:
    """argv of every `tool ...` call the text quotes (code blocks and inline spans)."""
    out = []
    for _, line, _ in commands(text):
        for part in SEPARATORS.split(re.sub(r"\s#.*$", "", line)):
            try:
                argv = shlex.split(part)
            except ValueError:
                continue
            if argv[:1] == [tool]:
                out.append(argv)
    return out


def helm_sets(argv: list[str]) -> list[tuple[str, str]]:
    """(key, value) of each `--set k=v[,k=v]` of one helm call (commas inside `{...}` kept)."""
    out = []
    for n, word in enumerate(argv):
        raw = argv[n + 1] if word == "--set" and n + 1 < len(argv) else word.removeprefix("--set=")
        if word != "--set" and not word.startswith("--set="):
            continue
        for pair in re.split(r",(?![^{]*\})", raw):
            key, _, value = pair.partition("=")
            out.append((key, value))
    return out


def has_key(values: Any, dotted: str) -> bool:
    """Whether values.yaml has the dotted key; below an empty map (free-form) anything goes."""
    node = values
    for part in dotted.split("."):
        if isinstance(node, dict) and not node:
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def helm_value(raw: str) -> Any:
    """The value `--set` gives: `{a,b}` a list, true/false a bool, digits an int, else the string."""
    if raw.startswith("{") and raw.endswith("}"):
        return [item for item in raw[1:-1].split(",") if item]
    if raw in ("true", "false"):
        return raw == "true"
    return int(raw) if re.fullmatch(r"-?\d+", raw) else raw


def as_values(sets: list[tuple[str, str]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, raw in sets:
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = helm_value(raw)
    return values


def unknown_keys(text: str) -> list[str]:
    """`--set` keys of the text's helm calls that values.yaml lacks."""
    return [
        f"--set {key}"
        for argv in argvs(text, "helm")
        for key, _ in helm_sets(argv)
        if not has_key(VALUES, key)
    ]


def image_plan(text: str) -> tuple[list[str], dict[str, str]]:
    """(problems, {repository, tag}) of a text that builds, pushes and installs the image."""
    builds, gpu_builds, pushes = set(), set(), set()
    for argv in argvs(text, "docker"):
        if argv[1:2] == ["build"]:
            tag = argv[argv.index("-t") + 1] if "-t" in argv else ""
            target = argv[argv.index("--target") + 1] if "--target" in argv else ""
            (gpu_builds if target == "gpu" else builds).add(tag)
        elif argv[1:2] == ["push"]:
            pushes.add(argv[2])
    sets = [dict(helm_sets(argv)) for argv in argvs(text, "helm") if argv[1] in ("install", "upgrade")]
    chosen = next((s for s in sets if "image.repository" in s and "image.tag" in s), None)
    if chosen is None:
        return ["no `helm install` sets image.repository and image.tag"], {}
    image = f"{chosen['image.repository']}:{chosen['image.tag']}"
    problems = []
    if image not in builds:
        problems.append(f"{image} is not built (`docker build -t {image} .`)")
    if f"{image}-gpu" not in gpu_builds:
        problems.append(f"{image}-gpu is not built with `--target gpu`")
    problems += [f"{tag} is not pushed" for tag in (image, f"{image}-gpu") if tag not in pushes]
    return problems, {"repository": chosen["image.repository"], "tag": chosen["image.tag"]}


@pytest.mark.parametrize("doc", DOCUMENTS, ids=[str(p.relative_to(ROOT)) for p in DOCUMENTS])
def test_every_quoted_helm_set_is_a_chart_value_and_renders(doc: Path, render) -> None:
    text = doc.read_text()
    assert unknown_keys(text) == [], f"{doc.relative_to(ROOT)} sets keys values.yaml does not have"
    for argv in argvs(text, "helm"):
        if argv[1] in ("install", "upgrade") and helm_sets(argv):
            render(as_values(helm_sets(argv)))  # raises helm_python.HelmValuesError on a bad value


def test_the_docs_set_the_image_keys() -> None:
    """The keys the README's build paragraph names are the chart's (and the scan sees them)."""
    assert VALUES["image"]["repository"] and "tag" in VALUES["image"]
    readme = dict(kv for argv in argvs((ROOT / "README.md").read_text(), "helm") for kv in helm_sets(argv))
    assert {"image.repository", "image.tag"} <= set(readme)


@pytest.mark.parametrize(
    "doc",
    [p for p in DOCUMENTS if argvs(p.read_text(), "docker")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_a_documented_build_is_what_the_chart_runs(doc: Path, render) -> None:
    problems, image = image_plan(doc.read_text())
    assert problems == [], f"{doc.relative_to(ROOT)}: {problems}"
    rendered = render({"image": image})
    containers = [
        c for d in rendered.kinds("Deployment") for c in d["spec"]["template"]["spec"]["containers"]
    ]
    operator = [c for c in containers if c["image"] == f"{image['repository']}:{image['tag']}"]
    assert len(operator) == 1, [c["image"] for c in containers]
    assert f"--image={image['repository']}:{image['tag']}-gpu" in operator[0]["args"]


def test_the_checks_bite() -> None:
    text = (
        "```bash\n"
        "docker build -t reg.example.com/x:1 .\n"
        "docker push reg.example.com/x:1\n"
        "helm install s helm/sphinxx --set image.repo=reg.example.com/x --set image.tag=1 \\\n"
        "  --set 'mlflow.server.allowedHosts={a.example.com,b.example.com}',s3.bucket=b\n"
        "```\n"
        "`helm upgrade s helm/sphinxx --reuse-values --set runtime.podDefaults.shmSize=1Gi`\n"
    )
    assert unknown_keys(text) == ["--set image.repo"]
    assert image_plan(text)[0] == ["no `helm install` sets image.repository and image.tag"]
    fixed = text.replace("image.repo=", "image.repository=")
    assert image_plan(fixed)[0] == [
        "reg.example.com/x:1-gpu is not built with `--target gpu`",
        "reg.example.com/x:1-gpu is not pushed",
    ]
    assert as_values(helm_sets(argvs(fixed, "helm")[0]))["mlflow"] == {
        "server": {"allowedHosts": ["a.example.com", "b.example.com"]}
    }
