"""The one safe reader of users' YAML and JSON (sphinxx/schema/documents.py): its bounds, its
duplicate keys, libyaml and pure Python alike, and every CLI path that reads a user's file."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sphinxx.schema import documents
from sphinxx.schema.documents import (
    MAX_BYTES,
    MAX_DEPTH,
    load_json,
    load_yaml,
    load_yaml_all,
    read_document,
    read_yaml_file,
)
from sphinxx.schema.fields import SchemaError

ROOT = Path(__file__).resolve().parents[2]
SPHINXX = str(Path(sys.executable).parent / "sphinxx")
HAVE_LIBYAML = getattr(yaml, "__with_libyaml__", False)
# Both parsers where libyaml is installed; the pure-Python one alone where it is not.
PARSERS = (
    [pytest.param(True, id="libyaml"), pytest.param(False, id="python")]
    if HAVE_LIBYAML
    else [pytest.param(False, id="python")]
)

SWEEP_HEAD = "apiVersion: sphinxx.dev/v1alpha1\nkind: ScalingSweep\nmetadata:\n  name: laughs\nspec:\n"
# The classic "billion laughs": 9 levels of 9 aliases, 9^9 (387 million) strings once expanded.
LAUGHS = '  lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"  lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
BOMB = SWEEP_HEAD + LAUGHS
# What `sphinxx sweep plan` must refuse within the bounds (1 s, 200 MB), one line naming the file.
BOMBS = {
    "alias bomb": (BOMB, "sweep.yaml:11: expands to more than 100,000 nodes"),
    "100k flow sequences": (SWEEP_HEAD + "  base: " + "[" * 100_000, "sweep.yaml:6: nested deeper than 64"),
    "100k flow mappings": (SWEEP_HEAD + "  base: " + "{a: " * 100_000, "sweep.yaml:6: nested deeper than 64"),
}


def _refusal(text: str | bytes, libyaml: bool = True, **limits) -> str:
    with pytest.raises(SchemaError) as err:
        load_yaml_all(text, "sweep.yaml", libyaml=libyaml, **limits)
    return str(err.value)


def _nested_yaml(depth: int, flow: bool) -> str:
    """`depth` collections, one inside the other: flow sequences, or block mappings."""
    if flow:
        return "[" * depth + "]" * depth
    return "".join("  " * i + "k:\n" for i in range(depth - 1)) + "  " * (depth - 1) + "k: 1\n"


# ------------------------------------------------------------------------------ aliases


@pytest.mark.parametrize("libyaml", PARSERS)
def test_the_alias_bomb_is_refused_in_time_naming_the_file_and_line(libyaml: bool) -> None:
    start = time.perf_counter()
    message = _refusal(BOMB, libyaml)
    assert time.perf_counter() - start < 1.0  # the refusal itself; the CLI test below bounds memory
    assert message.startswith("sweep.yaml:11: expands to more than 100,000 nodes")


@pytest.mark.parametrize("libyaml", PARSERS)
def test_the_node_budget_counts_each_alias_with_what_it_refers_to(libyaml: bool) -> None:
    # root mapping 1 + key a 1 + [1, 2] 3 + key b 1 + *x (the 3 nodes of [1, 2]) = 9
    text = "a: &x [1, 2]\nb: *x\n"
    assert load_yaml(text, "f", max_nodes=9, libyaml=libyaml) == {"a": [1, 2], "b": [1, 2]}
    assert _refusal(text, libyaml, max_nodes=8).startswith("sweep.yaml:2: expands to more than 8 nodes")
    # The budget is the stream's: two documents of 4 nodes each.
    assert load_yaml_all("[1, 2, 3]\n---\n[4, 5, 6]\n", "f", max_nodes=8, libyaml=libyaml) == [
        [1, 2, 3],
        [4, 5, 6],
    ]
    assert "expands to more than 7 nodes" in _refusal("[1, 2, 3]\n---\n[4, 5, 6]\n", libyaml, max_nodes=7)


@pytest.mark.parametrize("libyaml", PARSERS)
def test_modest_anchors_aliases_and_merge_keys_still_work(libyaml: bool) -> None:
    text = (
        "defaults: &defaults {lr: 0.001, betas: [0.9, 0.95]}\n"
        "small:\n  <<: *defaults\n  lr: 0.01\n"  # a merge key may be overridden: not a duplicate
        "large: *defaults\n"
        "names: [&n debug, *n]\n"
    )
    data = load_yaml(text, "f", libyaml=libyaml)
    assert data == {
        "defaults": {"lr": 0.001, "betas": [0.9, 0.95]},
        "small": {"lr": 0.01, "betas": [0.9, 0.95]},
        "large": {"lr": 0.001, "betas": [0.9, 0.95]},
        "names": ["debug", "debug"],
    }
    assert data == yaml.safe_load(text)


@pytest.mark.parametrize("libyaml", PARSERS)
def test_a_recursive_alias_is_refused(libyaml: bool) -> None:
    assert "sweep.yaml:2: alias *r refers to a collection that contains it; refused" in _refusal(
        "a: 1\nb: &r [1, *r]\n", libyaml
    )


# ------------------------------------------------------------------------------ depth


@pytest.mark.parametrize("libyaml", PARSERS)
@pytest.mark.parametrize("flow", [True, False], ids=["flow", "block"])
def test_depth_exactly_at_the_limit_is_read_and_one_more_is_refused(libyaml: bool, flow: bool) -> None:
    assert load_yaml(_nested_yaml(MAX_DEPTH, flow), "f", libyaml=libyaml) is not None
    line = 1 if flow else MAX_DEPTH + 1
    assert _refusal(_nested_yaml(MAX_DEPTH + 1, flow), libyaml) == (
        f"sweep.yaml:{line}: nested deeper than {MAX_DEPTH} levels; refused"
    )
    assert load_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "m.json") is not None
    with pytest.raises(SchemaError, match=f"^m.json:1: nested deeper than {MAX_DEPTH} levels; refused$"):
        load_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "m.json")


@pytest.mark.parametrize("libyaml", PARSERS)
@pytest.mark.parametrize("opener", ["[", "a: {", '{"a": '])
def test_100k_levels_are_refused_without_recursion(libyaml: bool, opener: str) -> None:
    start = time.perf_counter()
    assert _refusal("x:\n  " + opener * 100_000, libyaml).startswith("sweep.yaml:2: nested deeper than 64")
    # libyaml: milliseconds. PyYAML's pure-Python scanner looks up to 1024 characters ahead for a
    # key, quadratically in the open flow levels: up to a second on a busy 2-core machine, bounded
    # by that window whatever the file's size, so no time bound is asserted for it.
    if libyaml:
        assert time.perf_counter() - start < 1.0
    with pytest.raises(SchemaError, match="^m.json:2: nested deeper than 64 levels; refused$"):
        load_json("\n" + opener.replace("a: {", "[") * 100_000, "m.json")


# ------------------------------------------------------------------------------ duplicate keys


@pytest.mark.parametrize("libyaml", PARSERS)
def test_duplicate_keys_are_refused_naming_the_key_and_both_lines(libyaml: bool) -> None:
    lr_twice = "spec:\n  base:\n    train:\n      lr: 0.1\n      steps: 5\n      lr: 0.2\n"
    assert _refusal(lr_twice, libyaml) == "sweep.yaml:6: key 'lr' is given twice (first at line 4)"
    storage_twice = "storage: {uri: s3://a}\ntrain: {lr: 1}\nstorage: {uri: s3://b}\n"
    assert _refusal(storage_twice, libyaml) == "sweep.yaml:3: key 'storage' is given twice (first at line 1)"
    in_a_list = "sources:\n  - name: a\n    uri: x\n  - name: b\n    uri: y\n    name: c\n"
    assert _refusal(in_a_list, libyaml) == "sweep.yaml:6: key 'name' is given twice (first at line 4)"
    flow = "- {a: 1, a: 2}\n"
    assert _refusal(flow, libyaml) == "sweep.yaml:1: key 'a' is given twice (first at line 1)"
    # The same key in two mappings, or in two documents, is no duplicate.
    assert load_yaml_all("a: {x: 1}\nb: {x: 2}\n---\na: 3\n", "f", libyaml=libyaml) == [
        {"a": {"x": 1}, "b": {"x": 2}},
        {"a": 3},
    ]


def test_json_duplicate_keys_are_refused_naming_the_key_and_both_lines() -> None:
    nested = '{\n "name": "s",\n "shards": [\n  {"path": "a", "bytes": 1,\n   "path": "b"}\n ]\n}\n'
    with pytest.raises(SchemaError, match=r"^m.json:5: key 'path' is given twice \(first at line 4\)$"):
        load_json(nested, "m.json")
    top = '{"name": "s",\n"domain": "ocr",\n"name": "t"}'
    with pytest.raises(SchemaError, match=r"^m.json:3: key 'name' is given twice \(first at line 1\)$"):
        load_json(top, "m.json")
    escaped = '{"a": 1, "\\u0061": 2}'  # the same key once decoded
    with pytest.raises(SchemaError, match=r"^m.json:1: key 'a' is given twice"):
        load_json(escaped, "m.json")
    assert load_json('[{"a": 1}, {"a": 2}]', "m.json") == [{"a": 1}, {"a": 2}]
    assert load_json(b'{"key": "with [ and { inside"}', "m.json") == {"key": "with [ and { inside"}


def test_json_is_parsed_by_the_standard_library_after_the_scan() -> None:
    # The scan sees strings as json does: brackets inside them neither nest nor unbalance.
    assert load_json(json.dumps({"a": "[" * 100, "b": '\\"{'}), "m.json") == {"a": "[" * 100, "b": '\\"{'}


# ------------------------------------------------------------------------------ size, syntax, parsers


def test_size_is_bounded_at_exactly_max_bytes(tmp_path: Path) -> None:
    assert load_yaml("a: 1", "f", max_bytes=4) == {"a": 1}
    with pytest.raises(SchemaError, match="^f is larger than 3 bytes; refused$"):
        load_yaml("a: 1", "f", max_bytes=3)
    with pytest.raises(SchemaError, match="^f is larger than 4 bytes; refused$"):
        load_yaml("a: é", "f", max_bytes=4)  # bytes, not characters
    with pytest.raises(SchemaError, match="^m.json is larger than 1 bytes; refused$"):
        load_json("10", "m.json", max_bytes=1)
    # A file is read no further than the bound: /dev/zero is refused, not read forever.
    with pytest.raises(SchemaError, match=f"^/dev/zero is larger than {MAX_BYTES:,} bytes; refused$"):
        read_document("/dev/zero")
    with pytest.raises(SchemaError, match="^cannot read sweep file .*missing.yaml: No such file"):
        read_document(tmp_path / "missing.yaml", "sweep file")
    (tmp_path / "ok.yaml").write_text("a: [1, 2]\n")
    assert read_yaml_file(tmp_path / "ok.yaml") == {"a": [1, 2]}


@pytest.mark.parametrize("libyaml", PARSERS)
def test_invalid_yaml_names_the_file_line_and_column(libyaml: bool) -> None:
    message = _refusal("train: {lr: 1\n", libyaml)
    assert message.startswith("sweep.yaml is not valid YAML (line 2, column 1): ")
    assert _refusal("a: *missing\n", libyaml).startswith("sweep.yaml is not valid YAML (line 1, column 4)")
    assert "not valid YAML: month must be in 1..12" in _refusal("d: 2024-13-01\n", libyaml)
    with pytest.raises(SchemaError, match="^f is not valid YAML .*but found another document"):
        load_yaml("a: 1\n---\nb: 2\n", "f", libyaml=libyaml)
    with pytest.raises(SchemaError, match=r"^m.json is not valid JSON \(line 2, column 1\): Expecting value"):
        load_json("[1,\n", "m.json")


def _documents() -> list[Path]:
    presets = sorted((ROOT / "sphinxx" / "schema" / "presets").glob("*.yaml"))
    return sorted((ROOT / "examples").rglob("*.yaml")) + presets


@pytest.mark.parametrize("path", _documents(), ids=lambda p: p.name)
def test_every_example_and_preset_reads_as_safe_load_reads_it(path: Path) -> None:
    text = path.read_text()
    expected = list(yaml.safe_load_all(text))
    assert load_yaml_all(text, str(path)) == expected
    assert load_yaml_all(text, str(path), libyaml=False) == expected


@pytest.mark.skipif(not HAVE_LIBYAML, reason="PyYAML without libyaml: one parser only")
def test_libyaml_and_pure_python_agree_on_data_and_refusals() -> None:
    assert documents._loader_class(True).__name__ == "CheckedCLoader"
    assert documents._loader_class(False).__name__ == "CheckedLoader"
    texts = [
        "a: &x {b: [1, 2.5, null, true, '3']}\nc: *x\nd: {<<: *x, e: 2024-01-02}\n",
        "? [1, 2]\n: complex key\n",
        "- |\n  block\n  text\n- >\n  folded\n",
        BOMB,
        _nested_yaml(MAX_DEPTH + 1, flow=False),
        "x:\n  " + "[" * 100_000,  # libyaml refuses it itself (1000 levels): told in the same words
        "a: 1\nb: 2\na: 3\n",
    ]
    for text in texts:
        outcomes = []
        for libyaml in (True, False):
            try:
                outcomes.append(load_yaml_all(text, "f", libyaml=libyaml))
            except SchemaError as err:
                outcomes.append(str(err))
        assert outcomes[0] == outcomes[1], text


# ------------------------------------------------------------------------------ the CLI


def _sphinxx(*args: str, cwd: Path = ROOT, limit: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """Run the installed `sphinxx` as a user would; `limit`: under the memory bound (below). Returns
    the CPU seconds it used too: unlike its wall time, they hardly move on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [SPHINXX, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        preexec_fn=_limit_memory if limit else None,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


# The whole address space of the process, start-up included, is bounded: `sphinxx sweep plan`
# imports its planner lazily (no torch, numpy or MLflow), and planning examples/sweeps/tiny.yaml
# peaks at ~50 MB (VmPeak, measured on the 2-core CI machine), so RLIMIT_AS, the strict bound, is
# practical; the old reader allocated 2 GB on the alias bomb and died with a MemoryError.
MEMORY_BOUND = 200 * 2**20


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BOUND, MEMORY_BOUND))


def _one_line_error(result: subprocess.CompletedProcess, path: Path) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in lines[0] and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.slow  # sphinxx processes
@pytest.mark.parametrize("name", list(BOMBS))
def test_sweep_plan_refuses_bombs_within_the_bounds(name: str, tmp_path: Path) -> None:
    valid, baseline = _sphinxx("sweep", "plan", str(ROOT / "examples/sweeps/tiny.yaml"), limit=True)
    assert valid.returncode == 0, valid.stderr  # the bound leaves a valid plan room
    path = tmp_path / "sweep.yaml"
    text, expected = BOMBS[name]
    path.write_text(text)
    refused, cpu = _sphinxx("sweep", "plan", str(path), limit=True)
    assert expected in _one_line_error(refused, path)
    # Start-up is the same for both runs; the refusal may take 1 s more than planning a valid file
    # (the bound on the refusal alone is measured in-process above).
    assert cpu < baseline + 1.0


BAD_SWEEP = SWEEP_HEAD + "  base:\n    train:\n      lr: 0.1\n      lr: 0.2\n"
LR_TWICE = "sweep.yaml:9: key 'lr' is given twice (first at line 8)"
# Every CLI path that reads a user's file: (its arguments, the bad file: name and text, its one line).
CLI_PATHS = {
    "sweep plan": (["sweep", "plan", "{file}"], "sweep.yaml", BAD_SWEEP, LR_TWICE),
    "sweep check": (["sweep", "check", "{file}"], "sweep.yaml", BAD_SWEEP, LR_TWICE),
    "sweep run --local": (
        ["sweep", "run", "{file}", "--local", "--workdir", "w"],
        "sweep.yaml",
        BAD_SWEEP,
        LR_TWICE,
    ),
    "config show": (
        ["config", "show", "{file}"],
        "run.yaml",
        "train:\n  lr: 1\n  lr: 2\n",
        "run.yaml:3: key 'lr'",
    ),
    "data inspect data.yaml": (
        ["data", "inspect", "{file}"],
        "data.yaml",
        "data: {sources: [], sources: []}\n",
        "data.yaml:1: key 'sources' is given twice",
    ),
    "data inspect SOURCE": (
        ["data", "inspect", "{root}"],
        "src/manifest.json",
        '{"name": "a",\n "name": "b"}',
        "manifest.json:2: key 'name' is given twice (first at line 1)",
    ),
}


@pytest.mark.slow  # sphinxx processes
@pytest.mark.parametrize("name", list(CLI_PATHS))
def test_every_cli_path_refuses_a_bad_file_with_one_line(name: str, tmp_path: Path) -> None:
    command, file, text, expected = CLI_PATHS[name]
    path = tmp_path / file
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    result, _ = _sphinxx(*[a.format(file=path, root=path.parent) for a in command], cwd=tmp_path)
    assert expected in _one_line_error(result, path.parent), result.stderr
