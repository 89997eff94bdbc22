"""The bad-input corpus through the offline CLI: what admission refuses, `sphinxx validate` refuses
from a manifest file (and `sphinxx sweep plan` from a sweep file) with the same field path, in
one line on stderr, exit status 2.

The CLI runs in this process (`sphinxx.cli.main`), as a user's shell would run it, minus the
interpreter start: the corpus has over a hundred cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sphinxx.cli import main
from sphinxx.schema.resources import API_VERSION

from .corpus import BAD, GOOD, IDENTITY, SWEEP_BASE, TEXTS, Case


def _manifest(tmp_path: Path, kind: str, name: str, spec: dict) -> str:
    path = tmp_path / f"{name[:40]}.yaml"
    doc = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_validate_refuses_every_corpus_case_naming_its_field(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _manifest(tmp_path, case.kind, case.name, case.spec)
    rc, out, err = _run(["validate", path], capsys)
    assert rc == 2 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {case.kind}/"), err
    assert f": {case.path}: " in lines[0], (case.path, err)


SWEEPS = [c for c in BAD if c.kind == "ScalingSweep" and c.path != "metadata.name"]


@pytest.mark.parametrize("case", SWEEPS, ids=[c.id for c in SWEEPS])
def test_sweep_plan_refuses_every_corpus_sweep_naming_its_field(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _manifest(tmp_path, case.kind, case.name, case.spec)
    rc, out, err = _run(["sweep", "plan", path], capsys)
    assert rc == 2 and out == "", (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid sweep {path}: {case.path}: "), err


@pytest.mark.parametrize(("kind", "name", "spec"), GOOD, ids=[g[1] for g in GOOD])
def test_validate_admits_every_good_case(
    kind: str, name: str, spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _run(["validate", _manifest(tmp_path, kind, name, spec)], capsys)
    assert rc == 0 and err == "", err
    assert out.startswith(f"ok    {kind}/{name}: "), out


@pytest.mark.parametrize(("id_", "api", "kind", "field"), IDENTITY, ids=[i[0] for i in IDENTITY])
def test_a_document_under_the_wrong_api_version_or_kind_is_refused_offline(
    id_: str, api: str | None, kind: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = {"kind": kind, "metadata": {"name": "tiny"}, "spec": SWEEP_BASE}
    if api is not None:
        doc = {"apiVersion": api, **doc}
    path = tmp_path / f"{id_}.yaml"
    path.write_text(yaml.safe_dump(doc))
    rc, _, err = _run(["validate", str(path)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and f": {field}: " in err, err
    assert API_VERSION in err
    rc, out, err = _run(["sweep", "plan", str(path)], capsys)
    assert rc == 2 and out == "" and f"{path}: {field}: " in err, err


def test_other_apis_documents_are_skipped_beside_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"X": "y"}}
    sweep = {
        "apiVersion": API_VERSION,
        "kind": "ScalingSweep",
        "metadata": {"name": "tiny"},
        "spec": SWEEP_BASE,
    }
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump_all([secret, sweep]))
    rc, out, err = _run(["validate", str(path)], capsys)
    assert rc == 0 and err == "", err
    assert out.splitlines()[0].startswith(f"skip  {path}: document 1 (Secret)")
    assert out.splitlines()[1] == "ok    ScalingSweep/tiny: 4 points"


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_sweep_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The laptop examples leave storage.uri to the runner; on a cluster the operator's default
    # prefix fills it, which --storage-uri stands in for. README quotes the family's command.
    rc, out, err = _run(["validate", str(path), "--storage-uri", "s3://bucket/sweeps"], capsys)
    assert rc == 0 and err == "" and out.startswith("ok    ScalingSweep/"), err
    if path.name == "sphinx-x-family.yaml":
        rc, out, err = _run(["validate", str(path)], capsys)
        assert (rc, err) == (0, "") and out == "ok    ScalingSweep/sphinx-x-family: 12 points\n", out


@pytest.mark.parametrize(("id_", "text", "says"), TEXTS, ids=[t[0] for t in TEXTS])
def test_files_the_reader_refuses_get_one_line_from_every_offline_command(
    id_: str, text: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{id_}.yaml"
    path.write_text(text)
    for argv in (["validate", str(path)], ["sweep", "plan", str(path)]):
        rc, out, err = _run(argv, capsys)
        assert rc == 2 and out == "" and len(err.splitlines()) == 1, (argv, err[:500])
        assert str(path) in err and says in err, (argv, err)


def test_a_laptop_sweep_without_storage_is_refused_with_the_way_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = str(EXAMPLES[0].parent / "tiny.yaml")
    rc, out, err = _run(["validate", tiny], capsys)
    assert rc == 2 and out == "" and "spec.base.storage.uri: is required" in err and "--storage-uri" in err
    rc, out, err = _run(["validate", str(tmp_path / "missing.yaml")], capsys)
    assert (
        rc == 2
        and err == f"error: cannot read manifest {tmp_path / 'missing.yaml'}: No such file or directory\n"
    )
