"""Every exception of ours survives a pickle round trip with its message and fields.

Ray moves an exception raised in a worker to the Train controller and the driver by pickling it.
Python rebuilds an exception as `cls(*exc.args)`; a constructor with other arguments fails there,
and Ray reports a TypeError instead of the reason (a preemption read as a "System error"). The
classes are found by walking the packages, so a new exception class must be listed here.
"""

from __future__ import annotations

import importlib
import pickle
import pkgutil

import pytest

from sphinxx.evals.formats import FormatError
from sphinxx.jobs.checkpoint.background import CheckpointSaveError
from sphinxx.jobs.data.format import BadRecordError
from sphinxx.jobs.data.loader import TooManyBadRecordsError
from sphinxx.jobs.data.template import SampleTooLongError
from sphinxx.jobs.data.tokenizer import NoTokenizerFilesError, TokenizerFilesError
from sphinxx.jobs.preemption import Preempted, Resized, StopRequested
from sphinxx.jobs.segments import PreemptionsExhausted
from sphinxx.jobs.tracking import RunIdPending
from sphinxx.model.exported import ExportedFolderError
from sphinxx.operator.reconcile import RetryLater
from sphinxx.schema.documents import _DuplicateKey
from sphinxx.schema.fields import SchemaError
from sphinxx.storage import errors
from sphinxx.sweep.mlflow_rest import RestError
from sphinxx.sweep.mlflow_runs import TrackingUnavailable

PACKAGES = (
    "sphinxx",
    "sphinxx.schema",
    "sphinxx.sweep",
    "sphinxx.jobs",
    "sphinxx.storage",
    "sphinxx.model",
    "sphinxx.operator",
)
EXAMPLES: list[BaseException] = [
    Preempted(6, "SIGTERM"),
    Resized(9, "room for 1 more worker(s) beside 1"),
    StopRequested(3, "a planned stop"),
    CheckpointSaveError(8, "StorageAccessError: upload of optim/rank-00001.pt: permanent error"),
    PreemptionsExhausted(21, 20),
    BadRecordError("invalid_record", "s3://b/shard-0.jsonl:3", "no conversations"),
    TooManyBadRecordsError("12 of 100 records unreadable"),
    SampleTooLongError("the image block needs 1295 positions; seq_len is 1024"),
    TokenizerFilesError("tokenizer.model without tokenizer_config.json"),
    NoTokenizerFilesError("no vocabulary in s3://b/tok"),
    SchemaError("train.lr", "must be a finite number; got nan"),
    _DuplicateKey("lr"),
    FormatError("s3://b/vqav2/questions.json: not JSON"),
    ExportedFolderError("/exports/p1: vision/dinov2/model.safetensors is missing"),
    TrackingUnavailable("http://mlflow:5000 answered 503"),
    RestError("RESOURCE_DOES_NOT_EXIST: no experiment 'e'", "RESOURCE_DOES_NOT_EXIST"),
    RunIdPending("the operator has not named the MLflow run in s3://b/r/config.yaml yet"),
    RetryLater("the API server is busy", 5.0),
    errors.StorageError("failed", "s3://b/x"),
    errors.StorageAccessError("access denied", "s3://b/x"),
    errors.StorageTimeoutError("timed out", "s3://b/x"),
    errors.PreconditionFailedError("changed underneath", "s3://b/x"),
    errors.CheckpointAlreadyCommittedError("step 6 is committed", "s3://b/r/step-6"),
    errors.IncompleteCheckpointError("no manifest", "s3://b/r/step-6"),
    errors.CheckpointCorruptError("2 files differ", "s3://b/r/step-6", ["a.pt: size", "b.pt: digest"]),
    errors.CheckpointNotFoundError("no checkpoint at step 9", "s3://b/r"),
]


def _ours() -> set[type]:
    found: set[type] = set()
    names = []
    for package in PACKAGES:
        names += [
            info.name
            for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}.")
        ]
    for name in names:
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found.add(value)
    return found


def test_every_exception_class_of_ours_is_listed() -> None:
    assert _ours() == {type(e) for e in EXAMPLES}


@pytest.mark.parametrize("error", EXAMPLES, ids=[type(e).__name__ for e in EXAMPLES])
def test_round_trip_keeps_the_type_message_and_fields(error: BaseException) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error) and back.args == error.args
    assert {k: v for k, v in vars(back).items()} == {k: v for k, v in vars(error).items()}
