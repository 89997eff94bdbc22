"""The repository stands alone: every design document the code cites is in docs/, heading and all."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = (
    "operator",
    "jobs",
    "model",
    "storage",
    "sphinxx",
    "bench",
    "tests",
    "helm",
    "examples",
    "ops_runbooks",
    ".ci",
)
SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".md", ".toml", ".tpl"}
TOP_FILES = ("README.md", "pyproject.toml", "Makefile", "Dockerfile")
# `docs/moe.md, "Expert kernels"` or `docs/model.md, "Any-resolution images" and "Visual tokens per image"`
CITATION = re.compile(r'docs/([a-z_]+\.md)(?:, ((?:"[^"\n]+"(?: and |, )?)+))?')
# Any Markdown file a line names: `docs/moe.md`, `ops_runbooks/x.md`, `../shared/design/y.md`, `METHOD.md`.
MARKDOWN_PATH = re.compile(r"(?<![\w./-])((?:\.\.?/|/?[\w.-]+/)*[\w.-]*\w\.md)\b")
# Strings that look like a Markdown path but are data, not a citation (a test's object key).
NOT_CITATIONS = {"tests/operator/test_preflight.py": {"weights/tiny/README.md"}}


def _files() -> list[Path]:
    out = [ROOT / name for name in TOP_FILES]
    for folder in CODE:
        out += [
            p for p in (ROOT / folder).rglob("*") if p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return [p for p in out if p.is_file() and p.name != Path(__file__).name]


def _resolves(path: Path, cited: str) -> bool:
    """Whether `cited` names a file of this repository: from the repo root or beside the citing file."""
    for base in (ROOT, path.parent, ROOT / "docs", ROOT / "ops_runbooks"):
        target = (base / cited).resolve()
        if target.is_file() and target.is_relative_to(ROOT):
            return True
    return False


def _headings(doc: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")}


def test_every_cited_docs_page_and_heading_exists() -> None:
    cited = 0
    for path in _files():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            doc = ROOT / "docs" / match.group(1)
            assert doc.is_file(), f"{path.relative_to(ROOT)} cites {match.group(0)}: no such document"
            for heading in re.findall(r'"([^"]+)"', match.group(2) or ""):
                assert heading in _headings(doc), (
                    f"{path.relative_to(ROOT)} cites a missing heading: {match.group(0)}"
                )
            cited += 1
    assert cited > 50  # the code does cite its design


def test_no_citation_of_a_document_outside_the_repository() -> None:
    """Every Markdown file the code, tests, charts and runbooks name is a file of this repository:
    the design of record is docs/ (and the runbooks, the chart's README, bench/GPU.md); nothing cites
    the design inputs the project started from, a tool's notes, or a path that leaves the tree."""
    found = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in MARKDOWN_PATH.finditer(line):
                cited = match.group(1)
                if cited not in NOT_CITATIONS.get(rel, set()) and not _resolves(path, cited):
                    found.append(f"{rel}:{n} cites {cited}, which is not a file of this repository")
    assert not found, "\n".join(found)


def test_the_citation_check_bites(tmp_path: Path) -> None:
    for text in ('see ``shared/docs/moe.md, "Expert kernels"``', "# (environment.md)",
                 "see ../shared/design/x.md", "(/work/.library/device/KINDS.md)",
                 "METHOD.md: poison outputs"):  # fmt: skip
        cited = [m.group(1) for m in MARKDOWN_PATH.finditer(text)]
        assert cited and not any(_resolves(ROOT / "model" / "moe.py", c) for c in cited), text
    assert [m.group(1) for m in MARKDOWN_PATH.finditer("docs/moe.md and ops_runbooks/README.md")] == [
        "docs/moe.md",
        "ops_runbooks/README.md",
    ]
    assert _resolves(ROOT / "README.md", "docs/moe.md") and _resolves(
        ROOT / "ops_runbooks" / "x.md", "README.md"
    )


def test_the_docs_index_lists_every_document() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for doc in (ROOT / "docs").glob("*.md"):
        if doc.name != "README.md":
            assert f"({doc.name})" in index, f"docs/README.md does not list {doc.name}"
