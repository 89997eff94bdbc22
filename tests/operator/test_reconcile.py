"""The act layer's pure helpers: which objects a pass may skip."""

from __future__ import annotations

from typing import Any

import pytest

from sphinxx.operator import names, reconcile
from sphinxx.schema.status import RunStatus, SweepStatus, parse_status


def _obj(status: dict[str, Any], generation: int = 2, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"generation": generation, "annotations": annotations}, "status": status}


INVALID = [{"type": "Invalid", "status": "True", "reason": "InvalidSpec"}]


@pytest.mark.parametrize(
    ("obj", "settled"),
    [
        (_obj({"observedGeneration": 2, "phase": "Succeeded"}), True),
        (_obj({"observedGeneration": 1, "phase": "Succeeded"}), False),  # edited since
        (_obj({"observedGeneration": 2, "phase": "Running"}), False),
        (_obj({"observedGeneration": 2, "phase": "Failed"}), True),
        (_obj({"observedGeneration": 2, "phase": "Failed", "resumeToken": "a"}, **{names.ANNOTATION_RESUME: "a"}), True),
        (_obj({"observedGeneration": 2, "phase": "Failed", "resumeToken": "a"}, **{names.ANNOTATION_RESUME: "b"}), False),
        (_obj({"observedGeneration": 2, "phase": "Succeeded"}, **{names.ANNOTATION_ROLLBACK: "4@t"}), False),
        (_obj({"observedGeneration": 2, "phase": "Succeeded", "rollbackToken": "4@t"}, **{names.ANNOTATION_ROLLBACK: "4@t"}), True),
        (_obj({"observedGeneration": 2, "phase": "Failed", "conditions": INVALID}), True),
        (_obj({}), False),
    ],
)  # fmt: skip
def test_a_run_is_settled_once_it_ended_at_its_generation(obj: dict[str, Any], settled: bool) -> None:
    assert reconcile._settled(obj, parse_status(RunStatus, obj["status"])) is settled


def test_a_sweep_is_settled_only_when_invalid() -> None:
    done = _obj({"observedGeneration": 2, "phase": "Succeeded"})
    assert not reconcile._settled(done, parse_status(SweepStatus, done["status"]))
    invalid = _obj({"observedGeneration": 2, "phase": "Failed", "conditions": INVALID})
    assert reconcile._settled(invalid, parse_status(SweepStatus, invalid["status"]))
