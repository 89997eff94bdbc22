"""The ops runbooks: every page has the agreed sections, and every command they quote exists.

Every `sphinxx ...` and `kubectl sphinxx ...` invocation in ops_runbooks/*.md, in code blocks
(`bash` blocks: every line; `text` blocks: lines after a `$ ` prompt) and in inline code spans,
is parsed with the real parsers (`sphinxx.cli.build_parser()` and the kubectl plugin's
`build_parser()`) and must reach a handler; only in prose may a span name a whole command group
(`sphinxx ckpt`), which must then exist. Nothing is skipped: a runbook may only quote commands
that exist. Annotations, labels and MLflow tags under `sphinxx.dev/` must be ones the
operator uses, and the pages must link to each other by existing file names.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from sphinxx.cli import build_parser as sphinxx_parser
from sphinxx.cli import parse as sphinxx_parse
from sphinxx.operator import kubectl_plugin, names, reconcile
from sphinxx.sweep import mlflow_runs as tracking

from .conftest import ROOT

RUNBOOKS = ROOT / "ops_runbooks"
PAGES = sorted(p for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
SECTIONS = ["What you see", "Why", "Diagnose", "Fix", "Verify", "Escalate"]
REQUIRED_TOPICS = {
    "run-failed-retries-exhausted.md",
    "run-stuck-pending.md",
    "s3-checkpoint-problems.md",
    "mlflow-unreachable-or-duplicate-run.md",
    "elastic-resize.md",
    "operator-restart-upgrade-rollback.md",
    "delete-sweep-safely.md",
}
FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
SEPARATORS = re.compile(r"\s*(?:&&|\|\||;|\|)\s*")


def commands(text: str) -> list[tuple[int, str, bool]]:
    """(line number, command line, in prose) of every shell command the page quotes."""
    out: list[tuple[int, str, bool]] = []
    lines = text.splitlines()
    fence: str | None = None
    pending = ""
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line.strip())
        if match:
            fence = None if fence is not None else (match.group(1) or "text")
            continue
        if fence is None:
            out += [(number, span, True) for span in INLINE.findall(line)]
            continue
        stripped = line.strip()
        if fence in ("bash", "sh", "shell"):
            command = stripped
        elif stripped.startswith("$ "):
            command = stripped[2:]
        else:
            continue
        if pending:
            command, pending = pending + " " + command, ""
        if command.endswith("\\"):
            pending = command[:-1]
            continue
        out.append((number, command, False))
    return out


def invocations(command: str) -> list[list[str]]:
    """argv lists of the sphinxx / kubectl sphinxx calls in one command line (pipes, &&, $( ))."""
    found = []
    for inner in re.findall(r"\$\(([^()]*)\)", command):
        found += invocations(inner)
    command = re.sub(r"\$\([^()]*\)", "SUBST", command)
    command = re.sub(r"\s#.*$", "", command)
    for part in SEPARATORS.split(command):
        try:
            argv = shlex.split(part)
        except ValueError:  # a line of a multi-line quoted string (python -c "..."): words suffice
            argv = part.split()
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if argv[:1] == ["sphinxx"] or argv[:2] == ["kubectl", "sphinxx"] or argv[:1] == ["kubectl-sphinxx"]:
            found.append(argv)
    return found


def parse(argv: list[str], prose: bool = False) -> None:
    if argv[0] == "sphinxx":
        parser, rest = sphinxx_parser(), argv[1:]
    else:
        parser, rest = kubectl_plugin.build_parser(), argv[2:] if argv[0] == "kubectl" else argv[1:]
    if prose and rest == []:
        return  # the tool's name in prose ("`sphinxx` output")
    assert "-h" not in rest and "--help" not in rest, f"quote a real invocation, not help: {shlex.join(argv)}"
    try:
        args = sphinxx_parse(parser, rest) if argv[0] == "sphinxx" else parser.parse_args(rest)
    except SystemExit:
        raise AssertionError(f"does not parse: {shlex.join(argv)}") from None
    if getattr(args, "func", None) is not None:
        return
    # A bare group ("sphinxx ckpt") names the group in prose; a code block must run something.
    group = getattr(args, "group_parser", None)
    assert prose and group is not None and len(rest) == 1, (
        f"incomplete command (no subcommand): {shlex.join(argv)}"
    )


def test_the_required_pages_exist_and_the_index_lists_every_page() -> None:
    assert REQUIRED_TOPICS <= {p.name for p in PAGES}
    index = (RUNBOOKS / "README.md").read_text()
    assert {p.name for p in PAGES} == set(re.findall(r"\]\(([\w.-]+\.md)\)", index)) - {"README.md"}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_has_every_section_in_order(page: Path) -> None:
    headings = re.findall(r"^## (.+?)\s*$", page.read_text(), flags=re.M)
    assert [h for h in headings if h in SECTIONS] == SECTIONS, f"{page.name}: sections {headings}"
    assert page.read_text().startswith("# "), "one H1 title naming the symptom"


# The project's README, design docs and example pages are held to the same rule as the runbooks.
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "helm" / "sphinxx" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "examples").rglob("*.md")),
]


@pytest.mark.parametrize(
    "page",
    [RUNBOOKS / "README.md", *PAGES, *DOCUMENTS],
    ids=["README.md", *[p.name for p in PAGES], *[str(p.relative_to(ROOT)) for p in DOCUMENTS]],
)
def test_every_quoted_command_exists_and_parses(page: Path) -> None:
    quoted = [(n, argv, prose) for n, line, prose in commands(page.read_text()) for argv in invocations(line)]
    failures = []
    for number, argv, prose in quoted:
        try:
            parse(argv, prose)
        except AssertionError as err:
            failures.append(f"{page.name}:{number}: {err}")
    assert failures == []


def test_the_runbooks_use_the_recovery_commands() -> None:
    """The commands the issue names are actually taught somewhere (guards the extraction too)."""
    used = set()
    for page in PAGES:
        for _, line, _ in commands(page.read_text()):
            for argv in invocations(line):
                words = argv[2:] if argv[0] == "kubectl" else argv[1:]
                used.add(" ".join(words[:2]) if argv[0] == "sphinxx" else words[0])
    assert {"ckpt ls", "ckpt latest", "ckpt verify", "ckpt gc", "resume", "status", "logs"} <= used, used


def test_sphinxx_dev_keys_are_the_operators() -> None:
    known = {
        value
        for module in (names, reconcile, tracking)  # labels, annotations, finalizer, MLflow tags
        for key, value in vars(module).items()
        if key.isupper() and isinstance(value, str) and value.startswith(f"{names.GROUP}/")
    }
    for page in [RUNBOOKS / "README.md", *PAGES]:
        used = set(re.findall(r"(?<![\w.])sphinxx\.dev/[a-z][a-z0-9-]*", page.read_text()))
        used -= {f"{names.GROUP}/{names.VERSION}"}
        assert used <= known, f"{page.name}: unknown keys {sorted(used - known)}"


def test_links_between_pages_resolve() -> None:
    for page in [RUNBOOKS / "README.md", *PAGES]:
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"


def test_the_checker_catches_bad_commands() -> None:
    # The checks above are only as good as the extraction: prove it finds and rejects these.
    text = (
        "```bash\nsphinxx ckpt vrfy s3://b/r\nkubectl sphinxx resume run x -n ml\nsphinxx ckpt\n```\n"
        "`sphinxx ckpt gc s3://b/r --keep 3` `kubectl sphinxx logs` `sphinxx ckpts`\n"
    )
    quoted = [(argv, prose) for _, line, prose in commands(text) for argv in invocations(line)]
    assert len(quoted) == 6
    for argv, prose in quoted:
        with pytest.raises(AssertionError):
            parse(argv, prose)
    parse(["sphinxx", "ckpt"], prose=True)  # naming a group in prose is fine
    assert invocations('X=1 sphinxx ckpt ls "$ROOT" | head && kubectl sphinxx status s -n ml') == [
        ["sphinxx", "ckpt", "ls", "$ROOT"],
        ["kubectl", "sphinxx", "status", "s", "-n", "ml"],
    ]
