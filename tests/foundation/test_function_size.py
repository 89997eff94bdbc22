"""Functions a reader can hold: none over 60 lines in the job, the operator and storage.

Counted from the `def` line to the function's last line, docstring, comments and blank lines
included (what a reader scrolls through). A function that must be longer goes in ALLOWED with a
comment saying why; nested functions count on their own and inside their parent.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("jobs", "operator", "storage")
MAX_LINES = 60
# "folder/module.py:function" -> why it may be longer. Empty: every function fits.
ALLOWED: dict[str, str] = {}


def _functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.name, node.end_lineno - first + 1, node.lineno


def long_functions(root: Path = ROOT) -> list[str]:
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for name, lines, lineno in _functions(path):
                if lines > MAX_LINES and f"{rel}:{name}" not in ALLOWED:
                    found.append(f"{rel}:{lineno} {name}: {lines} lines")
    return found


def test_no_function_over_the_limit() -> None:
    found = long_functions()
    assert not found, f"functions over {MAX_LINES} lines (split them into named steps):\n" + "\n".join(found)


def test_the_allow_list_names_real_long_functions() -> None:
    """An entry that no longer applies (renamed, split) is removed, so the list stays honest."""
    for key in ALLOWED:
        rel, name = key.split(":")
        sizes = [lines for fn, lines, _ in _functions(ROOT / rel) if fn == name]
        assert sizes and max(sizes) > MAX_LINES, f"{key} is allowed but fits in {MAX_LINES} lines"


def test_the_check_bites(tmp_path: Path) -> None:
    module = tmp_path / "jobs" / "planted.py"
    module.parent.mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    module.write_text(f"def planted():\n{body}")
    (tmp_path / "operator").mkdir()
    (tmp_path / "storage").mkdir()
    assert long_functions(tmp_path) == [f"jobs/planted.py:1 planted: {MAX_LINES + 1} lines"]
