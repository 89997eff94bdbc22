"""URIs and the checkpoint layout: pure string functions."""

from __future__ import annotations

import os

import pytest

from sphinxx.schema.uris import STORAGE, problem
from sphinxx.storage import RunLayout, locate, step_name
from sphinxx.storage.layout import checkpoint_relpath, parse_step_name
from sphinxx.storage.uri import join, normalize


def test_normalize_schemes():
    assert normalize("s3://bucket/a/b/") == "s3://bucket/a/b"
    assert normalize("s3a://bucket/a") == "s3://bucket/a"
    assert normalize("memory://name/x") == "memory://name/x"
    assert normalize("file:///tmp/x/y/") == "file:///tmp/x/y"
    assert normalize("relative/dir") == "file://" + os.path.abspath("relative/dir")


@pytest.mark.parametrize("bad", ["", "gs://bucket/x", "s3:///nobucket", "file://relative", "memory://"])
def test_normalize_rejects_with_a_hint(bad):
    with pytest.raises(ValueError, match="://"):
        normalize(bad)


@pytest.mark.parametrize(
    ("bad", "rule"),
    [
        ("s3://bucket/runs/../other-team", "'..' segment"),
        ("s3a://bucket/..", "'..' segment"),
        ("file:///tmp/x/../y", "'..' segment"),
        ("s3://bucket/./x", "'.' segment"),
        ("file:///tmp/./x", "'.' segment"),
        ("s3://bucket//x", "empty segment"),
        ("s3://bucket/x//", "empty segment"),
        ("file:////tmp/x", "empty segment"),
        ("s3://bucket/a\\b", "backslash"),
        ("file:///tmp\\x", "backslash"),
    ],
)
def test_normalize_takes_s3_and_file_uris_literally_or_not_at_all(bad, rule):
    """Defence in depth behind admission (sphinxx.schema.uris): one line naming the URI and the rule."""
    with pytest.raises(ValueError) as err:
        normalize(bad)
    message = str(err.value)
    assert message.startswith(f"storage URI {bad!r} must not") and rule in message and "\n" not in message


def test_bare_local_paths_are_resolved_against_the_current_directory(tmp_path, monkeypatch):
    """What a user types on the CLI (`sphinxx ckpt ls ../ckpts/run-1`) is a path of theirs, not a spec."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert normalize("./ckpts/run-1") == f"file://{work}/ckpts/run-1"
    assert normalize("../ckpts/./run-1/") == f"file://{tmp_path}/ckpts/run-1"
    assert normalize(".demo/data") == f"file://{work}/.demo/data"


def test_what_admission_accepts_storage_opens():
    """Every s3/file/memory URI the schema's rule passes normalizes, so the two layers agree."""
    for uri in ("s3://b", "s3://b/x/", "S3A://b/v1.5/..x/...", "file:///abs/.demo/x/", "memory://m/x"):
        assert problem(uri, STORAGE) is None
        assert normalize(uri).split("://", 1)[0] in ("s3", "file", "memory")


def test_layout_matches_the_design_doc():
    layout = RunLayout.for_run("s3://b/sweeps/sweep-a/", "run-1")
    assert layout.root == "s3://b/sweeps/sweep-a/run-1"
    assert layout.step_dir(12000) == "s3://b/sweeps/sweep-a/run-1/checkpoints/step-000012000"
    assert layout.manifest(12000).endswith("/checkpoints/step-000012000/manifest.json")
    assert layout.latest == "s3://b/sweeps/sweep-a/run-1/checkpoints/latest.json"
    assert layout.run_config == "s3://b/sweeps/sweep-a/run-1/config.yaml"
    assert layout.ray_storage == "s3://b/sweeps/sweep-a/run-1/ray"
    assert join("s3://b/x/", "/y/", "z") == "s3://b/x/y/z"


def test_step_names_round_trip():
    assert step_name(0) == "step-000000000"
    assert parse_step_name("step-000012000") == 12000
    assert parse_step_name("s3://b/x/checkpoints/step-000000007/") == 7
    assert parse_step_name("latest.json") is None
    with pytest.raises(ValueError):
        step_name(-1)


def test_locate_accepts_what_users_paste():
    root = "s3://b/sw/run-1"
    for uri in (root, root + "/", root + "/checkpoints", root + "/checkpoints/latest.json"):
        assert locate(uri) == (RunLayout(root), None)
    assert locate(root + "/checkpoints/step-000000020") == (RunLayout(root), 20)
    assert locate(root + "/checkpoints/step-000000020/manifest.json") == (RunLayout(root), 20)
    with pytest.raises(ValueError, match="names a bucket"):
        locate("s3://b")


@pytest.mark.parametrize("bad", ["manifest.json", "_writers/rank-00000.json", "../x", "a//b", "/", "."])
def test_reserved_and_unsafe_file_names_rejected(bad):
    with pytest.raises(ValueError):
        checkpoint_relpath(bad)
    assert checkpoint_relpath("/model/w.bin") == "model/w.bin"


@pytest.mark.parametrize("bad", ["", "a/b", "-x", "x" * 300])
def test_run_id_validation(bad):
    with pytest.raises(ValueError, match="run id"):
        RunLayout.for_run("memory://x", bad)
