"""Reads from the watch, writes to the API: the operator's view of the objects it reconciles
(docs/operator.md, "Reads from the watch").

kopf keeps one watch stream per resource and fills in-memory indexes from it (handlers.py
declares one per watched resource, keyed by namespace and name). `CachedKube` answers `get` and
`list` for those resources from the indexes, so a reconcile pass that changes nothing sends no
request to the API server; everything else (RayClusters, events) goes to the API as before.

Writes go to the API, and their responses are remembered (`Recent`) until the watch delivers that
version or a newer one: a pass never acts on a copy older than this process's own last write
(an object created a moment ago is listed; an admission annotation just patched is seen). Versions
are compared as integers, as the API server's etcd revisions are; where either is not an integer,
the watch's copy wins. A remembered object the watch never shows (deleted by someone else right
after our write) is forgotten after `Recent.ttl` seconds.

Objects handed out are shared with the index: callers treat them as read-only (the act layer
copies before it changes anything, see expand.plan_children). RayJobs are mirrored without the
bulky parts of their spec (`LEAN`: the cluster template and the runtime env), which the operator
writes but never reads back; a thousand full RayJobs would hold ~60 MB of dicts.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .kube import Kube

Key = tuple[str, str]  # (namespace, name)
# What kopf hands a handler for one index: key -> a collection of the values objects put there.
IndexView = Mapping[Key, Iterable[dict[str, Any]]]


# resource -> spec fields left out of the mirror (see the module docstring)
LEAN = {"rayjobs": ("rayClusterSpec", "runtimeEnvYAML", "submitterPodTemplate")}


def mirror(resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of `obj`: a shallow copy, without the spec fields LEAN names."""
    out = dict(obj)
    drop = LEAN.get(resource)
    if drop and isinstance(out.get("spec"), dict):
        out["spec"] = {k: v for k, v in out["spec"].items() if k not in drop}
    return out


def _rv(obj: dict[str, Any]) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def selector_pair(labels: str) -> tuple[str, str] | None:
    """`key=value` as a pair; None for any other selector (those are answered by the API)."""
    if labels.count("=") != 1 or any(c in labels for c in ",!() "):
        return None
    key, value = labels.split("=")
    return key, value


def fresher(watched: dict[str, Any] | None, written: dict[str, Any] | None) -> dict[str, Any] | None:
    """The newer of the watch's copy and our last write's response (None: no opinion from the write)."""
    if written is None:
        return watched
    if watched is None:
        return written
    new, old = _rv(watched), _rv(written)
    if new is None or old is None or new >= old:
        return watched
    return written


class Recent:
    """Responses of this process's writes, per resource, until the watch catches up with them."""

    def __init__(self, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.ttl, self._clock = ttl, clock
        self._objs: dict[tuple[str, Key], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def remember(self, resource: str, obj: dict[str, Any] | None) -> None:
        if obj is None or "metadata" not in obj:
            return
        obj = mirror(resource, obj)
        now = self._clock()
        with self._lock:
            old = self._objs.get((resource, _key(obj)))
            if old is None or fresher(old[1], obj) is obj:
                self._objs[(resource, _key(obj))] = (now, obj)
            self._expire(now)

    def forget(self, resource: str, key: Key) -> None:
        with self._lock:
            self._objs.pop((resource, key), None)

    def get(self, resource: str, key: Key, watched: dict[str, Any] | None) -> dict[str, Any] | None:
        """The object to act on: the watch's copy unless our own write is newer."""
        with self._lock:
            entry = self._objs.get((resource, key))
            if entry is None:
                return watched
            written = entry[1]
            chosen = fresher(watched, written)
            if chosen is watched and watched is not None:
                del self._objs[(resource, key)]  # the watch has caught up
            return chosen

    def unseen(self, resource: str, namespace: str, seen: set[Key]) -> list[dict[str, Any]]:
        """Objects we wrote in `namespace` that the watch has not delivered yet (creations)."""
        with self._lock:
            self._expire(self._clock())
            return [
                obj
                for (res, key), (_, obj) in self._objs.items()
                if res == resource and key[0] == namespace and key not in seen
            ]

    def _expire(self, now: float) -> None:
        stale = [k for k, (t, _) in self._objs.items() if now - t > self.ttl]
        for k in stale:
            del self._objs[k]


RECENT = Recent()


class CachedKube(Kube):
    """`Kube` whose reads of the indexed resources come from the watch (see the module docstring)."""

    def __init__(self, api: Kube, indexes: Mapping[str, IndexView], recent: Recent = RECENT):
        # Share the API client of `api`: no second connection pool.
        self.api_client, self.custom, self.core = api.api_client, api.custom, api.core
        self.indexes, self.recent = indexes, recent

    def _watched(self, resource: str, key: Key) -> dict[str, Any] | None:
        try:
            values = builtins.list(self.indexes[resource][key])
        except KeyError:
            return None
        return values[0] if values else None

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        if resource not in self.indexes:
            return super().get(resource, namespace, name)
        return self.recent.get(resource, (namespace, name), self._watched(resource, (namespace, name)))

    def get_fresh(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = super().get_fresh(resource, namespace, name)
        self._after_write(resource, (namespace, name), obj)  # remembered as a write's response is
        return obj

    def list(self, resource: str, namespace: str, labels: str = "") -> builtins.list[dict[str, Any]]:
        pair = selector_pair(labels) if labels else ("", "")
        if resource not in self.indexes or pair is None:
            return super().list(resource, namespace, labels)
        keys = [k for k in builtins.list(self.indexes[resource]) if k[0] == namespace]
        out = []
        for key in keys:
            obj = self.recent.get(resource, key, self._watched(resource, key))
            if obj is not None:
                out.append(obj)
        out += self.recent.unseen(resource, namespace, set(keys))

        def matches(obj: dict[str, Any]) -> bool:
            return not labels or (obj["metadata"].get("labels") or {}).get(pair[0]) == pair[1]

        return sorted((o for o in out if matches(o)), key=lambda o: o["metadata"]["name"])

    def create(self, resource: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        obj, created = super().create(resource, body)
        self.recent.remember(resource, obj)
        return obj, created

    def patch(self, resource: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        obj = super().patch(resource, namespace, name, patch)
        self._after_write(resource, (namespace, name), obj)
        return obj

    def patch_json(
        self, resource: str, namespace: str, name: str, ops: builtins.list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        obj = super().patch_json(resource, namespace, name, ops)
        self._after_write(resource, (namespace, name), obj)
        return obj

    def patch_status(
        self, resource: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        obj = super().patch_status(resource, namespace, name, status)
        self._after_write(resource, (namespace, name), obj)
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> bool:
        self.recent.forget(resource, (namespace, name))
        return super().delete(resource, namespace, name)

    def _after_write(self, resource: str, key: Key, obj: dict[str, Any] | None) -> None:
        if obj is None:
            self.recent.forget(resource, key)  # gone
        else:
            self.recent.remember(resource, obj)
