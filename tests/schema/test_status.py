"""The status vocabulary: condition types, and what a status with them looks like on the wire."""

from __future__ import annotations

import json

from sphinxx.schema.openapi import Dialect, schema_of
from sphinxx.schema.status import (
    Condition,
    ConditionType,
    RunStatus,
    SweepStatus,
    dump_status,
    parse_status,
)

# Every condition type the operator writes, as the CRs' status shows it (docs/architecture.md,
# "Custom resources"; docs/operator.md, "Pre-flight checks", "MLflow parent and child runs", "Live progress").
CONDITION_TYPES = {
    "READY": "Ready",
    "RUNNING": "Running",
    "RESUMING": "Resuming",
    "SUSPENDED": "Suspended",
    "SUCCEEDED": "Succeeded",
    "FAILED": "Failed",
    "PROGRESSING": "Progressing",
    "COMPLETE": "Complete",
    "INVALID": "Invalid",
    "BLOCKED": "Blocked",
    "TRACKING_READY": "TrackingReady",
    "PREEMPTED": "Preempted",
    "PROGRESS_REPORTED": "ProgressReported",
}


def test_condition_types_are_the_strings_status_shows() -> None:
    assert {t.name: t.value for t in ConditionType} == CONDITION_TYPES


def test_a_condition_type_is_written_as_its_plain_string() -> None:
    st = RunStatus(
        conditions=[Condition(type=ConditionType.TRACKING_READY, status="True", reason="RunRecorded")]
    )
    data = dump_status(st)
    assert type(data["conditions"][0]["type"]) is str
    assert json.dumps(data) == (
        '{"attempt": 0, "retries": 0, "metrics": {}, "benchmarks": {}, "workers": {}, "preemptions": 0, '
        '"resizes": 0, "message": "", '
        '"conditions": [{"type": "TrackingReady", "status": "True", "reason": "RunRecorded", "message": ""}]}'
    )


def test_a_condition_of_a_type_we_do_not_write_is_kept() -> None:
    """Another writer's (or a newer operator's) condition parses and is written back unchanged."""
    raw = {"conditions": [{"type": "PodsScheduled", "status": "False", "reason": "Unschedulable"}]}
    st = parse_status(SweepStatus, raw)
    assert st.conditions[0].type == "PodsScheduled"
    assert dump_status(st)["conditions"] == [
        {"type": "PodsScheduled", "status": "False", "reason": "Unschedulable", "message": ""}
    ]


def test_the_crd_schema_of_a_condition_type_is_a_plain_string() -> None:
    """The enum is the operator's vocabulary, not a constraint on the API: the CRDs stay as they were."""
    schema = schema_of(Condition, Dialect.CRD)
    assert "enum" not in schema["properties"]["type"] and schema["properties"]["type"]["type"] == "string"
