"""`sphinxx ckpt ls | latest | verify | gc` against the moto server and file://."""

from __future__ import annotations

import argparse
import json

import pytest

from sphinxx.storage import CheckpointStore
from sphinxx.storage import cli as ckpt_cli


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Parse and dispatch like sphinxx.cli.main, with only this group registered."""
    parser = argparse.ArgumentParser(prog="sphinxx")
    ckpt_cli.register(parser.add_subparsers(dest="group"))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    rc = func(args) if func else (args.group_parser.print_help() or 2)
    out, err = capsys.readouterr()
    return rc, out, err


def test_registered_in_the_top_level_cli():
    from sphinxx.cli import COMMAND_GROUPS

    assert ("ckpt", "sphinxx.storage.cli") in COMMAND_GROUPS


@pytest.mark.parametrize("sub", ["ls", "latest", "verify", "gc", "rollback"])
def test_every_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as done:
        run(["ckpt", sub, "--help"], capsys)
    assert done.value.code == 0
    assert "URI" in capsys.readouterr().out


def test_bare_group_prints_help(capsys):
    rc, out, _ = run(["ckpt"], capsys)
    assert rc == 2 and "ls" in out and "verify" in out


@pytest.fixture(params=["file", "s3"])
def run_uri(request, tmp_path, make_ckpt):
    if request.param == "s3":
        prefix = f"s3://{request.getfixturevalue('s3_bucket')}/sweeps"
    else:
        prefix = "file://" + str(tmp_path / "sweeps")
    store = CheckpointStore(prefix, "run-1")
    for step, loss in ((100, 3.0), (200, 2.0), (300, 2.5), (400, 2.6)):
        store.save(
            step, make_ckpt({"model/w.bin": 2000, "extra/rng.json": 20}), metadata={"metrics": {"loss": loss}}
        )
    with store.writer(500) as w:
        w.write_bytes("model/w.bin", b"partial")
    return store.root


def test_ls_latest_verify_gc(run_uri, capsys):
    rc, out, _ = run(["ckpt", "ls", run_uri], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert "committed" in lines[1] and lines[1].split()[0] == "100"
    assert "partial" in lines[5] and lines[5].split()[0] == "500"
    assert "latest.json -> step 400" in out

    rc, out, _ = run(["ckpt", "latest", run_uri, "--json"], capsys)
    body = json.loads(out)
    assert rc == 0 and body["step"] == 400 and body["metrics"] == {"loss": 2.6} and body["files"] == 2

    rc, out, _ = run(["ckpt", "verify", run_uri, "--step", "200"], capsys)
    assert rc == 0 and out.startswith("OK step 200")

    rc, out, _ = run(
        ["ckpt", "gc", run_uri, "--dry-run", "--keep-last", "2", "--metric", "loss", "--grace", "0"], capsys
    )
    assert rc == 0 and "would delete  step 100" in out and "would delete  step 500 (partial" in out
    assert "keep          step 200 (best-1-loss)" in out
    rc, out, _ = run(["ckpt", "ls", run_uri, "--json"], capsys)
    assert [json.loads(line)["step"] for line in out.splitlines()] == [100, 200, 300, 400, 500]  # dry run

    rc, out, _ = run(
        ["ckpt", "gc", run_uri, "--keep-last", "2", "--metric", "loss", "--grace", "0", "--json"], capsys
    )
    assert rc == 0 and json.loads(out)["delete"] == [100] and json.loads(out)["delete_partial"] == [500]
    rc, out, _ = run(["ckpt", "ls", run_uri, "--json"], capsys)
    assert [json.loads(line)["step"] for line in out.splitlines()] == [200, 300, 400]


def test_verify_failure_names_the_file(run_uri, capsys):
    store = CheckpointStore.from_uri(run_uri)
    bad = store.layout.file(300, "extra/rng.json")
    store.fs().write_bytes(bad, b"x" * 20)  # same size, other bytes
    rc, _, err = run(["ckpt", "verify", run_uri + "/checkpoints/step-000000300"], capsys)
    assert rc == 1 and "FAILED step 300" in err and f"{bad}: sha256" in err
    rc, out, _ = run(["ckpt", "verify", run_uri, "--step", "300", "--sizes-only"], capsys)
    assert rc == 0


def test_errors_name_the_uri(s3_env, capsys, tmp_path):
    rc, _, err = run(["ckpt", "latest", "s3://no-such-bucket-zz/sweeps/run-1"], capsys)
    assert rc == 1 and "s3://no-such-bucket-zz" in err and "bucket does not exist" in err
    rc, _, err = run(["ckpt", "ls", "gs://bucket/run"], capsys)
    assert rc == 2 and "gs://bucket/run" in err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("run_id: r\n")  # a run that has committed nothing yet
    rc, _, err = run(["ckpt", "gc", "file://" + str(tmp_path / "r"), "--keep-last", "1"], capsys)
    assert rc == 2 and "keep_last must be >= 2" in err
    rc, _, err = run(["ckpt", "verify", "file://" + str(tmp_path / "r")], capsys)
    assert rc == 1 and "no committed checkpoint under file://" in err
    rc, out, err = run(["ckpt", "latest", "file://" + str(tmp_path / "r"), "--json"], capsys)
    assert rc == 1 and out.strip() == "null" and err.startswith("error: file://")


def test_rollback_marks_newer_steps_and_ls_shows_them(run_uri, capsys):
    rc, out, err = run(["ckpt", "rollback", run_uri, "--to-step", "200", "--reason", "diverged"], capsys)
    assert rc == 0, err
    assert "rolled back to step 200: step(s) 300, 400 no longer count" in out
    rc, out, _ = run(["ckpt", "ls", run_uri, "--json"], capsys)
    states = {row["step"]: row["state"] for row in map(json.loads, out.splitlines())}
    assert states == {
        100: "committed",
        200: "committed",
        300: "rolled-back",
        400: "rolled-back",
        500: "partial",
    }
    rc, out, _ = run(["ckpt", "latest", run_uri], capsys)
    assert rc == 0 and out.startswith("step 200 ")
    rc, _, err = run(["ckpt", "rollback", run_uri, "--to-step", "300"], capsys)
    assert rc == 1 and "step 300 is not a committed checkpoint" in err


def test_ls_shows_a_benchmarks_record_by_its_count(tmp_path, make_ckpt, capsys):
    """The job's `benchmarks` metric is a record, not a number: `ckpt ls` counts its entries."""
    store = CheckpointStore("file://" + str(tmp_path / "sweeps"), "run-b")
    scores = {name: {"score": 0.5, "metric": "exact_match", "samples": 4, "step": 10, "tokens": 40}
              for name in ("gqa", "pope")}  # fmt: skip
    store.save(10, make_ckpt({"model/w.bin": 20}), metadata={"metrics": {"loss": 2.5, "benchmarks": scores}})
    rc, out, _ = run(["ckpt", "ls", store.root], capsys)
    assert rc == 0 and out.splitlines()[1].split()[-2:] == ["benchmarks:2", "loss=2.5"]
