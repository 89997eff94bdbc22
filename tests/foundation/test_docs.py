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
)
SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".md", ".toml", ".tpl"}
# `docs/moe.md, "Expert kernels"` or `docs/model.md, "Any-resolution images" and "Visual tokens per image"`
CITATION = re.compile(r'docs/([a-z_]+\.md)(?:, ((?:"[^"\n]+"(?: and |, )?)+))?')
OUTSIDE = re.compile(r"(?<![\w/])(orchestration|sphinx_x_model|moe|environment|conventions|architecture)\.md")


def _files() -> list[Path]:
    out = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "Makefile"]
    for folder in CODE:
        out += [
            p for p in (ROOT / folder).rglob("*") if p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return [p for p in out if p.is_file() and p.name != Path(__file__).name]


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
    for path in _files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if (found := OUTSIDE.search(line)) and "docs/" + found.group(0) not in line:
                raise AssertionError(
                    f"{path.relative_to(ROOT)}:{n} cites {found.group(0)} outside docs/: {line.strip()}"
                )


def test_the_docs_index_lists_every_document() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for doc in (ROOT / "docs").glob("*.md"):
        if doc.name != "README.md":
            assert f"({doc.name})" in index, f"docs/README.md does not list {doc.name}"
