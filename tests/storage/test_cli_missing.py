"""Every `sphinxx ckpt` command on a URI that points at nothing: one line, `error:`, the URI, exit 1.

A table of (command, where) over a missing S3 bucket, a missing run under an existing bucket and a
missing local path, plus the one honest "nothing yet" answer: a run that exists but has committed
no checkpoint lists as empty (exit 0) and has no `latest` (exit 1, still one `error:` line).
"""

from __future__ import annotations

import pytest

from sphinxx.cli import main

COMMANDS = [["ls"], ["latest"], ["verify"], ["gc", "--dry-run"]]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _missing(kind: str, bucket: str, tmp_path) -> tuple[str, str]:
    """(URI, what the message must say) for each way of pointing at nothing."""
    return {
        "no-bucket": ("s3://no-such-bucket-zz/sweeps/run-1", "the bucket does not exist"),
        "no-run-on-s3": (f"s3://{bucket}/sweeps/no-such-run", "nothing is stored there"),
        "no-local-path": (f"file://{tmp_path}/nowhere/run-1", "nothing is stored there"),
    }[kind]


@pytest.mark.parametrize("kind", ["no-bucket", "no-run-on-s3", "no-local-path"])
@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_uri_that_points_at_nothing_is_one_error_line(command, kind, s3_bucket, tmp_path, capsys) -> None:
    uri, says = _missing(kind, s3_bucket, tmp_path)
    code, out, err = _run(["ckpt", command[0], uri, *command[1:]], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and out == "", (code, out, err)
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and uri.split("/run")[0].split("/no")[0] in lines[0]
    )
    assert says in lines[0], lines[0]


def test_a_run_without_checkpoints_is_empty_not_an_error(s3_bucket, capsys) -> None:
    import boto3

    boto3.client("s3").put_object(Bucket=s3_bucket, Key="sweeps/run-1/config.yaml", Body=b"run_id: run-1\n")
    uri = f"s3://{s3_bucket}/sweeps/run-1"
    code, out, _ = _run(["ckpt", "ls", uri], capsys)
    assert code == 0 and "no checkpoints under" in out
    code, _, err = _run(["ckpt", "latest", uri], capsys)
    assert code == 1 and err.startswith(f"error: {uri}/checkpoints: no committed checkpoint")
    code, out, _ = _run(["ckpt", "gc", uri, "--dry-run"], capsys)
    assert code == 0 and "nothing to delete" in out
