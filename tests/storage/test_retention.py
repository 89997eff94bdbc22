"""Retention: the pure decision (property-based) and its execution on a store."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sphinxx.storage import (
    CheckpointStore,
    CheckpointSummary,
    RetentionPolicy,
    StorageAccessError,
    plan_retention,
)
from sphinxx.storage.retention import PartialFolder, plan_partial_gc
from tests.storage.fault_proxy import Rule

policies = st.builds(
    RetentionPolicy,
    keep_last=st.integers(2, 6),
    keep_best=st.integers(0, 3),
    metric=st.sampled_from([None, "loss", "acc"]),
    mode=st.sampled_from(["min", "max"]),
    milestone_every=st.sampled_from([0, 3, 10, 50]),
    keep_final=st.booleans(),
)


@st.composite
def histories(draw):
    steps = draw(st.lists(st.integers(0, 200), unique=True, max_size=25))
    out = []
    for step in steps:
        metrics = {}
        if draw(st.booleans()):
            metrics["loss"] = draw(st.floats(0, 10, allow_nan=False))
        if draw(st.booleans()):
            metrics["acc"] = draw(st.sampled_from([0.1, 0.5, 0.5, 0.9]))  # ties on purpose
        out.append(CheckpointSummary(step, metrics, final=draw(st.booleans()) and step == max(steps)))
    return out


@given(histories(), policies, st.lists(st.integers(0, 200), max_size=2))
def test_plan_properties(checkpoints, policy, protected):
    plan = plan_retention(checkpoints, policy, protected)
    steps = sorted(c.step for c in checkpoints)
    assert sorted([*plan.keep, *plan.delete]) == steps and not set(plan.keep) & set(plan.delete)
    if steps:
        assert steps[-1] in plan.keep  # the newest committed always survives
    assert set(steps[-policy.keep_last :]) <= set(plan.keep)
    for c in checkpoints:
        if policy.milestone_every and c.step % policy.milestone_every == 0:
            assert c.step in plan.keep
        if policy.keep_final and c.final:
            assert c.step in plan.keep
        if c.step in protected:
            assert c.step in plan.keep
    # Reference for "best M": rank by hand, ties to the newer step.
    if policy.metric and policy.keep_best:
        ranked = sorted(
            (c for c in checkpoints if policy.metric in c.metrics),
            key=lambda c: (
                c.metrics[policy.metric] if policy.mode == "min" else -c.metrics[policy.metric],
                -c.step,
            ),
        )
        assert {c.step for c in ranked[: policy.keep_best]} <= set(plan.keep)
    # Nothing is kept without a reason.
    must = (
        set(steps[-policy.keep_last :])
        | set(protected)
        | {c.step for c in checkpoints if c.final and policy.keep_final}
    )
    must |= {s for s in steps if policy.milestone_every and s % policy.milestone_every == 0}
    if policy.metric and policy.keep_best:
        must |= {c.step for c in ranked[: policy.keep_best]}
    assert set(plan.keep) == must & set(steps)


def test_policy_validation():
    with pytest.raises(ValueError, match="keep_last must be >= 2"):
        RetentionPolicy(keep_last=1)
    with pytest.raises(ValueError):
        RetentionPolicy(milestone_every=-1)
    with pytest.raises(ValueError):
        RetentionPolicy(mode="best")


def test_partial_gc_respects_the_grace_period():
    partials = [PartialFolder(1, 1000.0), PartialFolder(2, 1990.0), PartialFolder(3, None)]
    assert plan_partial_gc(partials, now=2000.0, grace_s=60) == (1, 3)
    assert plan_partial_gc(partials, now=2000.0, grace_s=0) == (1, 2, 3)
    with pytest.raises(ValueError):
        plan_partial_gc(partials, now=0, grace_s=-1)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layout=st.lists(st.sampled_from(["committed", "partial"]), min_size=1, max_size=9),
    keep_last=st.integers(2, 4),
)
def test_store_retention_counts_only_committed(layout, keep_last):
    """On memory://: partial folders, even the newest, neither count towards K
    nor get deleted by retention."""
    import uuid

    store = CheckpointStore(f"memory://ret-{uuid.uuid4().hex[:8]}/runs", "run")
    for i, kind in enumerate(layout):
        step = (i + 1) * 10
        with store.writer(step) as w:
            w.write_bytes("w.bin", b"x" * step)
        if kind == "committed":
            store.commit(step, metadata={"metrics": {"loss": float(step % 7)}})
    committed = [(i + 1) * 10 for i, k in enumerate(layout) if k == "committed"]
    partial = [(i + 1) * 10 for i, k in enumerate(layout) if k == "partial"]
    plan = store.apply_retention(RetentionPolicy(keep_last=keep_last, keep_best=0))
    survivors = [c.step for c in store.committed()]
    assert survivors == committed[-keep_last:] == sorted(plan.keep)
    assert [f.step for f in store.scan() if not f.committed] == partial
    if committed:
        assert store.latest().step == committed[-1]
    store.fs().delete_tree(store.root)


def test_deletion_removes_the_manifest_before_the_files(s3_prefix, fault_proxy):
    """If deleting a victim's files fails, it is already uncommitted:
    never a committed-but-empty checkpoint."""
    from sphinxx.storage import StorageOptions

    store = CheckpointStore(
        s3_prefix, "run", options=StorageOptions(endpoint_url=fault_proxy.endpoint_url, max_attempts=2)
    )
    for step in (1, 2, 3):
        with store.writer(step) as w:
            w.write_bytes("model/w.bin", b"x" * 100)
        store.commit(step)
    fault_proxy.add(
        Rule("error", method="POST", path=r"\?delete", times=100, status=403, code="AccessDenied")
    )
    with pytest.raises(StorageAccessError, match="step-000000001"):
        store.apply_retention(RetentionPolicy(keep_last=2))
    assert [c.step for c in store.committed()] == [2, 3]
    assert [f.step for f in store.scan() if not f.committed] == [1]  # files left for gc
    fault_proxy.clear()
    assert store.clean_partial(grace_s=0) == (1,)
    assert [f.step for f in store.scan()] == [2, 3]
