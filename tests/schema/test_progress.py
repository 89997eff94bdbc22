"""The progress record: what the job writes, and how the operator judges what it reads."""

from __future__ import annotations

import json
import math

import pytest

from sphinxx.schema.progress import ProgressRecord, clock, encode, eta_seconds, read_record

URI = "s3://b/sweeps/run-1/progress.json"
NOW = 1_800_000_000.0


def _record(**over) -> ProgressRecord:
    base = dict(run_id="run-1", attempt=2, step=40, total_steps=100, loss=2.5, tokens_per_s=1234.5,
                samples_per_s=3.0, mfu=0.31, seconds_per_step=1.5, eta_seconds=90.0, tokens_seen=4e4,
                time=NOW - 10)  # fmt: skip
    return ProgressRecord(**{**base, **over})


def _read(data: bytes | None, attempt: int = 2, max_age: float = 300, log_interval: int = 1):
    return read_record(data, URI, "run-1", attempt, NOW, max_age, log_interval)


def test_a_written_record_reads_back_as_written() -> None:
    record = _record()
    reading = _read(encode(record))
    assert reading.reason == "Reported" and reading.record == record
    assert "step 40" in reading.message


def test_eta_is_the_remaining_steps_at_the_rate_and_unknown_without_one() -> None:
    assert eta_seconds(40, 100, 1.5) == 90.0
    assert eta_seconds(100, 100, 1.5) == 0.0
    assert eta_seconds(40, 0, 1.5) is None  # total not known
    assert eta_seconds(40, 100, 0.0) is None  # no rate yet (first logged step)
    assert clock(3723.4) == "1:02:03" and clock(0) == "0:00:00" and clock(90_000) == "25:00:00"


def test_a_diverged_loss_is_written_as_null_which_json_and_kubernetes_can_hold() -> None:
    data = encode(_record(loss=math.nan))
    assert json.loads(data)["loss"] is None
    assert _read(data).record.loss is None


def test_no_record_yet_is_said_not_an_error() -> None:
    reading = _read(None)
    assert (reading.record, reading.reason) == (None, "NotWritten") and URI in reading.message


@pytest.mark.parametrize(
    ("data", "names"),
    [
        (b'{"format_version": 1, "run_id": "run-1", "st', "not JSON"),  # a torn write
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({**json.loads(encode(_record())), "format_version": 7}).encode(), "format_version"),
        (json.dumps({**json.loads(encode(_record())), "step": "forty"}).encode(), f"{URI}.step"),
        (json.dumps({**json.loads(encode(_record())), "step": -1}).encode(), f"{URI}.step"),
        (json.dumps({**json.loads(encode(_record())), "mfu": None, "time": "x"}).encode(), f"{URI}.time"),
        (encode(_record()).replace(b'"loss": 2.5', b'"loss": NaN'), f"{URI}.loss"),
    ],
)
def test_a_malformed_record_is_ignored_with_the_file_and_field_named(data: bytes, names: str) -> None:
    reading = _read(data)
    assert reading.record is None and reading.reason == "Malformed"
    assert names in reading.message and reading.message.startswith("ignored: ")


def test_unknown_keys_of_a_newer_writer_are_ignored() -> None:
    body = {**json.loads(encode(_record())), "gpu_temperature": 71}
    assert _read(json.dumps(body).encode()).record == _record()


def test_a_record_of_another_run_or_an_older_attempt_is_not_used() -> None:
    other = _read(encode(_record(run_id="run-2")))
    assert (other.record, other.reason) == (None, "OtherRun") and "'run-2'" in other.message
    older = _read(encode(_record(attempt=1)), attempt=2)
    assert (older.record, older.reason) == (None, "OlderAttempt") and "attempt 1" in older.message
    # A later attempt than the operator has seen (its status not yet written) is fine.
    assert _read(encode(_record(attempt=3)), attempt=2).reason == "Reported"


def test_a_stale_record_is_ignored_unless_a_logged_window_is_that_long() -> None:
    old = _record(time=NOW - 400, seconds_per_step=2.0)
    stale = _read(encode(old), max_age=300)
    assert (stale.record, stale.reason) == (None, "Stale") and "step 40" in stale.message
    # 100 steps between logged steps at 2 s a step: the job writes every 200 s, so 400 s is not stale.
    assert _read(encode(old), max_age=300, log_interval=100).reason == "Reported"
    assert _read(encode(_record(time=NOW + 30))).reason == "Reported"  # a writer's clock a bit ahead
