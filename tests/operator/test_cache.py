"""The operator's watch-fed reads (operator/cache.py), against the Kubernetes emulator.

The index stands where kopf's would: a mapping (namespace, name) -> [object], filled here by
hand with what a watch would have delivered, so each test can make the watch lag or lead.
"""

from __future__ import annotations

from typing import Any

from sphinxx.operator import names
from sphinxx.operator.cache import CachedKube, Recent, fresher, mirror, selector_pair
from sphinxx.operator.kube import Kube


def _run(name: str, namespace: str, sweep: str = "s") -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": namespace, "labels": {names.LABEL_SWEEP: sweep}},
        "spec": {"config": {"preset": "debug"}},
    }


def _cached(kube, index: dict, clock=None) -> tuple[CachedKube, Kube]:
    api = Kube(kube.api_client())
    recent = Recent(ttl=60, clock=clock) if clock else Recent()
    return CachedKube(api, {"trainingruns": index}, recent), api


def test_reads_come_from_the_index_not_the_api(kube) -> None:
    ns = kube.new_namespace("cache")
    cached, api = _cached(kube, {})
    obj, _ = api.create("trainingruns", _run("a", ns))  # not through the cache
    assert api.get("trainingruns", ns, "a") is not None
    assert cached.get("trainingruns", ns, "a") is None  # the (empty) watch answers, not the API
    cached.indexes["trainingruns"][(ns, "a")] = [obj]
    assert cached.get("trainingruns", ns, "a") is obj
    assert [o["metadata"]["name"] for o in cached.list("trainingruns", ns, f"{names.LABEL_SWEEP}=s")] == ["a"]
    assert cached.list("trainingruns", ns, f"{names.LABEL_SWEEP}=other") == []
    # Resources without an index, and selectors the cache does not evaluate, go to the API.
    assert [
        o["metadata"]["name"] for o in cached.list("trainingruns", ns, f"{names.LABEL_SWEEP} in (s)")
    ] == ["a"]


def test_own_writes_are_seen_until_the_watch_catches_up(kube) -> None:
    ns = kube.new_namespace("cache")
    index: dict = {}
    cached, api = _cached(kube, index)
    created, was_new = cached.create("trainingruns", _run("b", ns))
    assert was_new
    # Created a moment ago, not yet delivered by the watch: listed and got anyway.
    assert cached.get("trainingruns", ns, "b")["metadata"]["uid"] == created["metadata"]["uid"]
    assert [o["metadata"]["name"] for o in cached.list("trainingruns", ns)] == ["b"]
    # The watch delivers the creation; then our status write makes its copy stale.
    index[(ns, "b")] = [created]
    patched = cached.patch_status("trainingruns", ns, "b", {"phase": "Pending"})
    assert cached.get("trainingruns", ns, "b")["status"]["phase"] == "Pending"
    # The watch catches up (same version): its copy is used and the remembered one dropped.
    index[(ns, "b")] = [patched]
    assert cached.get("trainingruns", ns, "b") is patched
    assert cached.recent.unseen("trainingruns", ns, set()) == []
    # A newer version from someone else wins over anything we wrote before.
    newer = api.patch("trainingruns", ns, "b", {"metadata": {"annotations": {"x": "y"}}})
    index[(ns, "b")] = [newer]
    assert cached.get("trainingruns", ns, "b")["metadata"]["annotations"]["x"] == "y"


def test_a_write_the_watch_never_shows_is_forgotten_after_the_ttl(kube) -> None:
    ns = kube.new_namespace("cache")
    now = [0.0]
    cached, api = _cached(kube, {}, clock=lambda: now[0])
    cached.create("trainingruns", _run("c", ns))
    api.delete("trainingruns", ns, "c")  # someone deletes it before the watch showed it
    assert cached.get("trainingruns", ns, "c") is not None
    now[0] = 61.0
    assert cached.list("trainingruns", ns) == [] and cached.get("trainingruns", ns, "c") is None
    # Deleting through the cache forgets at once.
    cached.create("trainingruns", _run("d", ns))
    cached.delete("trainingruns", ns, "d")
    assert cached.get("trainingruns", ns, "d") is None


def test_fresher_compares_resource_versions_as_integers() -> None:
    def obj(rv: str) -> dict:
        return {"metadata": {"name": "x", "resourceVersion": rv}}

    watched, written = obj("10"), obj("9")
    assert fresher(watched, written) is watched  # "10" < "9" as strings; not as revisions
    assert fresher(obj("9"), obj("10"))["metadata"]["resourceVersion"] == "10"
    opaque = obj("abc")
    assert fresher(opaque, obj("10")) is opaque  # not comparable: the watch wins
    assert fresher(None, written) is written and fresher(watched, None) is watched


def test_rayjobs_are_mirrored_without_their_cluster_template() -> None:
    job = {
        "metadata": {"name": "j"},
        "spec": {"suspend": True, "rayClusterSpec": {"big": 1}, "runtimeEnvYAML": "x"},
    }
    assert mirror("rayjobs", job)["spec"] == {"suspend": True}
    assert job["spec"]["rayClusterSpec"] == {"big": 1}  # the original is untouched
    assert mirror("trainingruns", job)["spec"] == job["spec"]
    assert (
        selector_pair("a=b") == ("a", "b")
        and selector_pair("a!=b") is None
        and selector_pair("a=b,c=d") is None
    )


def test_a_rayjob_the_watch_lags_on_is_asked_of_the_api_before_it_counts_as_gone(kube) -> None:
    """Past `Recent.ttl` a lagging watch would say a live attempt's RayJob is missing (retried as a
    failure); the pass asks the API first, and a RayJob that is really gone stays gone."""
    from sphinxx.operator.reconcile import _current_rayjob
    from sphinxx.schema.status import RunPhase, RunStatus

    ns = kube.new_namespace("cache")
    now = [0.0]
    api = Kube(kube.api_client())
    cached = CachedKube(api, {"rayjobs": {}}, Recent(ttl=60, clock=lambda: now[0]))
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "j-a1", "namespace": ns},
        "spec": {},
    }
    cached.create("rayjobs", job)
    now[0] = 120.0  # the watch has not delivered it and our write is forgotten ...
    assert cached.recent.unseen("rayjobs", ns, set()) == []  # ... at the next write or list
    assert cached.get("rayjobs", ns, "j-a1") is None
    running = RunStatus(phase=RunPhase.PENDING, attempt=1, ray_job_name="j-a1")
    assert _current_rayjob(cached, ns, running)["metadata"]["name"] == "j-a1"
    assert cached.get("rayjobs", ns, "j-a1") is not None  # remembered again, as a write's response
    api.delete("rayjobs", ns, "j-a1")
    now[0] = 240.0
    assert cached.recent.unseen("rayjobs", ns, set()) == []
    assert _current_rayjob(cached, ns, running) is None
    assert _current_rayjob(cached, ns, RunStatus(phase=RunPhase.PENDING)) is None  # no attempt yet
