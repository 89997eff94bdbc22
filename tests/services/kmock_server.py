"""A Kubernetes API emulator over HTTP for tests: kmock, with the gaps that stop kopf and kubectl closed.

Run it as a process (tests do, through `tests/services/kube.py`):

    python -m tests.services.kmock_server --port 8001 [--resources FILE_OR_JSON ...]

kmock 0.8's `KubernetesEmulator` keeps objects in memory and speaks the REST paths, but it never
sets server-owned metadata, answers 200 on create, answers 500 on a failed JSON-patch `test`, and
has no list `kind`, no selectors and no status subresource (docs/architecture.md, "Real components in tests").
This subclass keeps kmock's discovery, error rendering and HTTP server and replaces the object
store with one that behaves like an API server in the ways our code and tests depend on:

- metadata: `uid`, `resourceVersion` (one global counter), `generation` (bumped when anything but
  metadata/status changes), `creationTimestamp`, `generateName`, namespace from the URL;
- create answers 201 and 409 on a live name; names and label values are validated (422);
- PATCH: JSON patch (`application/json-patch+json`, `test` failures answer 422), merge patch for
  the rest; strategic merge on a custom resource answers 415 like a real server; PUT replaces,
  with a 409 on a stale `resourceVersion`;
- the `status` subresource is separate where declared: the main path ignores `status`, the
  `/status` path changes only `status`;
- delete with finalizers sets `deletionTimestamp`; the object goes when they are removed;
  owner references are garbage-collected in the background style (children of a removed uid go);
- list/watch: `kind`/`apiVersion` on lists, label and field selectors, watch resumption from a
  `resourceVersion` (replayed from a per-resource event log), `timeoutSeconds`;
- server-side tables (`Accept: ...;as=Table`) from printer columns, so `kubectl get` shows them;
- applying a CustomResourceDefinition declares its resource, as a real server does.

Not emulated: server-side apply, CRD schema enforcement, admission, `namespaces` as objects
(kmock's path parser cannot route `/api/v1/namespaces`), field managers. The module is longer
than our 400-line guide because it is one server; splitting it would scatter one protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import datetime
import json
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import aiobus, enums, rendering
from kmock._internal.k8s import KubernetesError, KubernetesObjectNotFoundError

NAMESPACES = "v1/namespaces"
NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/([^/]+))?/?$")
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
EVENT_LOG_SIZE = 20_000  # per resource; older watch positions get the full current state instead
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass
class ResourceSpec:
    """What the emulator serves for one group/version/plural (a CRD version, or a built-in)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: list[str] = field(default_factory=list)
    subresources: list[str] = field(default_factory=list)
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}" if self.group else f"v1/{self.plural}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceSpec:
        return cls(
            group=data.get("group", ""),
            version=data["version"],
            plural=data["plural"],
            kind=data["kind"],
            namespaced=data.get("namespaced", True),
            short_names=list(data.get("shortNames", [])),
            subresources=list(data.get("subresources", [])),
            printer_columns=list(data.get("printerColumns", [])),
        )


def specs_from_crd(crd: dict[str, Any]) -> list[ResourceSpec]:
    """One spec per served version of an apiextensions.k8s.io/v1 CustomResourceDefinition."""
    spec, names = crd["spec"], crd["spec"]["names"]
    return [
        ResourceSpec(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            short_names=list(names.get("shortNames", [])),
            subresources=sorted(version.get("subresources", {})),
            printer_columns=list(version.get("additionalPrinterColumns", [])),
        )
        for version in spec["versions"]
        if version.get("served", True)
    ]


def _builtin(group: str, version: str, plural: str, kind: str, **kwargs: Any) -> ResourceSpec:
    return ResourceSpec(group, version, plural, kind, **kwargs)


# Served before any CRD is applied: what kopf, our operator and the KubeRay stand-in touch. Our own
# CRDs come without printer columns here; pass the generated CRD YAML (--resources) to get them.
BUILTIN_RESOURCES: list[ResourceSpec] = [
    _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short_names=["ns"]),
    _builtin(
        "",
        "v1",
        "events",
        "Event",
        short_names=["ev"],
        printer_columns=[
            {"name": "Last Seen", "type": "date", "jsonPath": ".lastTimestamp"},
            {"name": "Type", "type": "string", "jsonPath": ".type"},
            {"name": "Reason", "type": "string", "jsonPath": ".reason"},
            {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
            {"name": "Message", "type": "string", "jsonPath": ".message"},
        ],
    ),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=["cm"]),
    _builtin("", "v1", "secrets", "Secret"),
    _builtin("", "v1", "pods", "Pod", short_names=["po"], subresources=["status"]),
    # What `sphinxx doctor` reads: nodes (allocatable GPUs), service accounts, the operator's Deployment.
    _builtin("", "v1", "nodes", "Node", namespaced=False, short_names=["no"], subresources=["status"]),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=["sa"]),
    _builtin("apps", "v1", "deployments", "Deployment", short_names=["deploy"], subresources=["status"]),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short_names=["crd", "crds"], subresources=["status"]),
    # kopf's peering objects (kopf `--peering`); harmless when kopf runs --standalone.
    _builtin("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
    _builtin("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
    _builtin("ray.io", "v1", "rayjobs", "RayJob", subresources=["status"]),
    _builtin("ray.io", "v1", "rayclusters", "RayCluster", subresources=["status"]),
    _builtin("sphinxx.dev", "v1alpha1", "scalingsweeps", "ScalingSweep", short_names=["sweep"],
             subresources=["status"]),
    _builtin("sphinxx.dev", "v1alpha1", "trainingruns", "TrainingRun", short_names=["trun"],
             subresources=["status"]),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Small pure helpers: time, selectors, JSONPath for printer columns, merge patch.


def _verb(method: enums.method | None, action: enums.action | None) -> str:
    """The API server's request verb: the HTTP method, except that a GET is a LIST or a WATCH."""
    if action == enums.action.WATCH:
        return "WATCH"
    if action == enums.action.LIST and method == enums.method.GET:
        return "LIST"
    return method.value.upper() if method else "UNKNOWN"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_age(timestamp: str, now: datetime.datetime | None = None) -> str:
    """Kubernetes' short duration format (`5s`, `3m`, `2h`, `4d`) for `date` printer columns."""
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return str(timestamp)
    seconds = max(0, int(((now or datetime.datetime.now(datetime.UTC)) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def jsonpath_get(obj: Any, path: str) -> Any:
    """Evaluate the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[?(@.k=="v")].b`."""
    tokens = re.findall(
        r"\.([A-Za-z0-9_\-/]+)|\[(\d+)\]|\[\?\(@\.([A-Za-z0-9_]+)==[\"']([^\"']*)[\"']\)\]", path
    )
    current = obj
    for key, index, filter_key, filter_value in tokens:
        if current is None:
            return None
        if key:
            current = current.get(key) if isinstance(current, dict) else None
        elif index:
            current = current[int(index)] if isinstance(current, list) and int(index) < len(current) else None
        else:
            matches = [
                i for i in current or [] if isinstance(i, dict) and str(i.get(filter_key)) == filter_value
            ]
            current = matches[0] if matches else None
    return current


def _dotted(obj: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def matches_labels(labels: dict[str, str], selector: str) -> bool:
    """Label selector grammar: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a)`."""
    for term in re.findall(r"[^,(]+(?:\([^)]*\))?", selector or ""):
        term = term.strip()
        if not term:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m.group(3).split(",")}
            present = m.group(1) in labels and labels[m.group(1)] in values
            if present != (m.group(2) == "in"):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def matches_fields(obj: dict[str, Any], selector: str) -> bool:
    """Field selectors as equality/inequality on dotted paths (a real server allows fewer fields)."""
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        negate = "!=" in term
        key, value = (s.strip() for s in re.split(r"!=|==|=", term, maxsplit=1))
        actual = _dotted(obj, key)
        if (str(actual) == value if actual is not None else value == "") == negate:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, `null` deletes, everything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _json_body(request: rendering.Request, default: Any) -> Any:
    # kubectl sends protobuf for built-in kinds (e.g. `kubectl create namespace`); only JSON is emulated.
    try:
        return json.loads(request.body) if request.body else default
    except (UnicodeDecodeError, ValueError):
        raise Invalid("only JSON bodies are emulated", status=415, reason="UnsupportedMediaType") from None


class Invalid(KubernetesError):
    def __init__(self, message: str, status: int = 422, reason: str = "Invalid") -> None:
        super().__init__(status=status, reason=reason, message=message)


# ---------------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class SphinxxKubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with an API-server-like object store (see the module docstring)."""

    _specs: dict[str, ResourceSpec] = attrs.field(factory=dict, init=False)
    _store: dict[str, dict[tuple[str | None, str], dict[str, Any]]] = attrs.field(
        factory=lambda: collections.defaultdict(dict), init=False
    )
    _log: dict[str, collections.deque] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=EVENT_LOG_SIZE)), init=False
    )
    _revision: int = attrs.field(default=0, init=False)
    counts: collections.Counter = attrs.field(factory=collections.Counter, init=False)

    # -- declaration ---------------------------------------------------------------------------

    def declare(self, spec: ResourceSpec) -> None:
        self._specs[spec.key] = spec
        self.resources[spec.key] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.kind.lower(),
            namespaced=spec.namespaced,
            verbs=ALL_VERBS,
            shortnames=spec.short_names,
            subresources=spec.subresources,
        )

    def _spec(self, request: rendering.Request) -> ResourceSpec:
        res = request.resource
        key = f"{res.group}/{res.version}/{res.plural}" if res.group else f"v1/{res.plural}"
        if key not in self._specs:
            raise kmock.KubernetesResourceNotFoundError()
        return self._specs[key]

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        # Match the kubectl on the image (1.32), so it neither warns about skew nor falls back.
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-kmock", "platform": "linux/amd64"}

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        # kmock repeats short names on subresource entries, which makes kubectl warn that `trun`
        # is ambiguous; a real server lists subresources without them.
        res = request.resource
        specs = [s for s in self._specs.values() if s.group == res.group and s.version == res.version]
        if not specs and res.group != "":
            raise kmock.KubernetesResourceNotFoundError()
        entries: list[dict[str, Any]] = []
        for spec in specs:
            entries.append(
                {
                    "name": spec.plural,
                    "singularName": spec.kind.lower(),
                    "namespaced": spec.namespaced,
                    "kind": spec.kind,
                    "verbs": ALL_VERBS,
                    "shortNames": spec.short_names,
                }
            )
            entries += [
                {"name": f"{spec.plural}/{sub}", "singularName": "", "namespaced": spec.namespaced,
                 "kind": spec.kind, "verbs": ["get", "patch", "update"]}
                for sub in spec.subresources
            ]  # fmt: skip
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": res.group and f"{res.group}/{res.version}" or res.version,
            "resources": entries,
        }

    def _openapi_v3(self, path: str) -> dict[str, Any]:
        """Just enough OpenAPI v3 for kubectl to see that PATCH takes `fieldValidation`.

        kubectl then leaves validation to the server (which, here, does not enforce schemas)
        instead of downloading protobuf OpenAPI v2 for client-side validation.
        """
        groups = sorted({(s.group, s.version) for s in self._specs.values()})
        digest = str(abs(hash(tuple(sorted(self._specs)))))
        if path.rstrip("/") == "/openapi/v3":
            return {
                "paths": {
                    gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
                    for gv in (f"apis/{g}/{v}" if g else f"api/{v}" for g, v in groups)
                }
            }
        prefix = path.removeprefix("/openapi/v3/")
        paths: dict[str, Any] = {}
        for spec in self._specs.values():
            if (f"apis/{spec.group}/{spec.version}" if spec.group else f"api/{spec.version}") != prefix:
                continue
            scope = "namespaces/{namespace}/" if spec.namespaced else ""
            gvk = {"group": spec.group, "version": spec.version, "kind": spec.kind}
            param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
            paths[f"/{prefix}/{scope}{spec.plural}/{{name}}"] = {
                "patch": {"x-kubernetes-group-version-kind": gvk, "parameters": param},
                "put": {"x-kubernetes-group-version-kind": gvk, "parameters": param},
            }
            paths[f"/{prefix}/{scope}{spec.plural}"] = {
                "post": {"x-kubernetes-group-version-kind": gvk, "parameters": param}
            }
        return {"openapi": "3.0.0", "info": {"title": "kmock", "version": "v1"}, "paths": paths,
                "components": {"schemas": {}}}  # fmt: skip

    # -- dispatch ------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock's path parser cannot route /api/v1/namespaces[/NAME] (it reads "namespaces" as the
        # start of a namespaced path); build the request for our own handler instead.
        match = NAMESPACE_PATH.match(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        name = match.group(1)
        query = dict(raw_request.query)
        method = enums.method(raw_request.method)
        if method == enums.method.GET and query.get("watch") in ("true", "1"):
            action = enums.action.WATCH
        elif name is None:
            action = {enums.method.GET: enums.action.LIST, enums.method.POST: enums.action.CREATE}.get(method)
        else:
            action = {
                enums.method.GET: enums.action.FETCH,
                enums.method.PATCH: enums.action.UPDATE,
                enums.method.DELETE: enums.action.DELETE,
            }.get(method)
        request = rendering.Request(
            method=raw_request.method,
            url=raw_request.url,
            params=query,
            headers=dict(raw_request.headers),
            body=body,
            action=action,
            resource=kmock.resource("", "v1", "namespaces"),
            name=name,
            raw_request=raw_request,
        )
        return await self._handle(request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.url.path.startswith("/openapi/v3"):
            return aiohttp.web.json_response(self._openapi_v3(request.url.path))
        if request.url.path == "/metrics":
            return aiohttp.web.Response(text=self.metrics_text(), content_type="text/plain")
        if request.resource is None or not request.resource.plural:
            return await super()._handle(request)  # discovery, /version, user reactions
        try:
            spec = self._spec(request)
            method, action = request.method, request.action
            self.counts[(_verb(method, action), spec.plural, request.subresource or "")] += 1
            if action == enums.action.WATCH:
                return await self._watch(request, spec)
            if action == enums.action.LIST:
                return self._render(request, spec, self._list(request, spec), list_=True)
            if action == enums.action.FETCH:
                return self._render(request, spec, [self._get(spec, request.namespace, request.name)])
            async with self._lock:
                if action == enums.action.CREATE:
                    obj = await self._create(request, spec)
                    return aiohttp.web.json_response(obj, status=201)
                if action == enums.action.UPDATE:
                    return aiohttp.web.json_response(await self._patch(request, spec))
                if method == enums.method.PUT and request.name:
                    return aiohttp.web.json_response(await self._replace(request, spec))
                if action == enums.action.DELETE:
                    return aiohttp.web.json_response(
                        await self._delete(spec, request.namespace, request.name)
                    )
            raise Invalid(
                f"{method} on {request.url.path} is not emulated", status=405, reason="MethodNotAllowed"
            )
        except KubernetesError as exc:
            return await self._render_error(exc)

    def metrics_text(self) -> str:
        """`apiserver_request_total` as a real API server's /metrics has it (verb, resource, subresource)."""
        lines = [
            "# HELP apiserver_request_total Counter of apiserver requests broken out by verb and resource.",
            "# TYPE apiserver_request_total counter",
        ]
        for (verb, resource, sub), count in sorted(self.counts.items()):
            lines.append(
                f'apiserver_request_total{{verb="{verb}",resource="{resource}",subresource="{sub}"}} {count}'
            )
        return "\n".join(lines) + "\n"

    # -- reads ---------------------------------------------------------------------------------

    def _get(self, spec: ResourceSpec, namespace: str | None, name: str | None) -> dict[str, Any]:
        obj = self._store[spec.key].get((namespace if spec.namespaced else None, name or ""))
        if obj is None:
            raise KubernetesObjectNotFoundError(
                reason="NotFound", message=f'{spec.plural}.{spec.group} "{name}" not found'
            )
        return obj

    def _list(self, request: rendering.Request, spec: ResourceSpec) -> list[dict[str, Any]]:
        labels, fields = request.params.get("labelSelector", ""), request.params.get("fieldSelector", "")
        return [
            obj
            for (namespace, _), obj in sorted(
                self._store[spec.key].items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
            )
            if request.namespace is None or namespace == request.namespace
            if matches_labels(obj["metadata"].get("labels") or {}, labels)
            if matches_fields(obj, fields)
        ]

    def _render(
        self, request: rendering.Request, spec: ResourceSpec, objs: list[dict[str, Any]], list_: bool = False
    ) -> aiohttp.web.Response:
        if "as=Table" in request.headers.get("Accept", ""):
            return aiohttp.web.json_response(self._table(request, spec, objs))
        if not list_:
            return aiohttp.web.json_response(objs[0])
        return aiohttp.web.json_response(
            {
                "apiVersion": spec.api_version,
                "kind": f"{spec.kind}List",
                "metadata": {"resourceVersion": str(self._revision)},
                "items": objs,
            }
        )

    def _table(
        self, request: rendering.Request, spec: ResourceSpec, objs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        columns = spec.printer_columns or [AGE_COLUMN]
        include = request.params.get("includeObject", "Metadata")
        rows = []
        for obj in objs:
            cells: list[Any] = [obj["metadata"]["name"]]
            for column in columns:
                value = jsonpath_get(obj, column["jsonPath"])
                cells.append(human_age(value) if column.get("type") == "date" and value else value)
            row: dict[str, Any] = {"cells": cells}
            if include == "Object":
                row["object"] = obj
            elif include == "Metadata":
                row["object"] = {
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata",
                    "metadata": obj["metadata"],
                }
            rows.append(row)
        definitions = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
        definitions += [
            {
                "name": c["name"],
                "type": "string" if c.get("type") == "date" else c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in columns
        ]
        return {
            "apiVersion": "meta.k8s.io/v1",
            "kind": "Table",
            "metadata": {"resourceVersion": str(self._revision)},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    async def _watch(self, request: rendering.Request, spec: ResourceSpec) -> aiohttp.web.StreamResponse:
        labels, fields = request.params.get("labelSelector", ""), request.params.get("fieldSelector", "")
        since = request.params.get("resourceVersion", "")
        bus: aiobus.Bus = self._buses[spec.key]  # type: ignore[index]
        async with self._lock:
            marker = await bus.mark()
            log = self._log[spec.key]
            if since.isdigit() and int(since) > 0 and (not log or log[0][0] <= int(since) + 1):
                initial = [event for revision, event in log if revision > int(since)]
            elif since.isdigit() and int(since) > 0 and log:
                initial = [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]
            else:
                initial = [{"type": "ADDED", "object": obj} for obj in self._list(request, spec)]

        def wanted(event: dict[str, Any]) -> bool:
            obj = event["object"]
            meta = obj.get("metadata", {})
            if event["type"] == "ERROR":
                return True
            if request.namespace is not None and meta.get("namespace") != request.namespace:
                return False
            return matches_labels(meta.get("labels") or {}, labels) and matches_fields(obj, fields)

        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)

        async def stream() -> None:
            for event in initial:
                if wanted(event):
                    await response.write(json.dumps(event).encode() + b"\n")
            async for event in bus.stream(since=marker):
                if wanted(event):
                    await response.write(json.dumps(event).encode() + b"\n")

        timeout = float(request.params["timeoutSeconds"]) if request.params.get("timeoutSeconds") else None
        try:
            await asyncio.wait_for(stream(), timeout)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            await bus.unmark(marker)
        return response

    # -- writes (all under self._lock) ---------------------------------------------------------

    def _bump(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _emit(self, spec: ResourceSpec, kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._log[spec.key].append((int(obj["metadata"]["resourceVersion"]), event))
        await self._buses[spec.key].put(event)  # type: ignore[index]

    def _validate_meta(self, meta: dict[str, Any]) -> None:
        name = meta.get("name", "")
        if not name or len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            raise Invalid(
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain is required'
            )
        for key, value in (meta.get("labels") or {}).items():
            if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
                raise Invalid(
                    f'metadata.labels: Invalid value: "{value}": must be at most 63 characters ({key})'
                )

    async def _create(self, request: rendering.Request, spec: ResourceSpec) -> dict[str, Any]:
        obj = _json_body(request, {})
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        namespace = (request.namespace or meta.get("namespace")) if spec.namespaced else None
        if spec.namespaced and not namespace:
            raise Invalid("the namespace of the object is required", status=400, reason="BadRequest")
        self._validate_meta(meta)
        key = (namespace, meta["name"])
        if key in self._store[spec.key]:
            raise KubernetesError(
                status=409, reason="AlreadyExists", message=f'{spec.plural} "{meta["name"]}" already exists'
            )
        if "status" in spec.subresources:
            obj.pop("status", None)
        obj.setdefault("apiVersion", spec.api_version)
        obj.setdefault("kind", spec.kind)
        meta.update(
            uid=str(uuid.uuid4()), resourceVersion=self._bump(), generation=1, creationTimestamp=_now()
        )
        if namespace:
            meta["namespace"] = namespace
            await self._ensure_namespace(namespace)
        if spec.key == NAMESPACES:
            obj["status"] = {"phase": "Active"}
        self._store[spec.key][key] = obj
        if spec.key == "apiextensions.k8s.io/v1/customresourcedefinitions":
            self._accept_crd(obj)
        await self._emit(spec, "ADDED", obj)
        return obj

    async def _ensure_namespace(self, namespace: str) -> None:
        # A real server refuses objects in a missing namespace; tests isolate by fresh namespaces,
        # so they appear on first use instead (and kopf, watching namespaces, sees them appear).
        if (None, namespace) in self._store[NAMESPACES]:
            return
        spec = self._specs[NAMESPACES]
        obj = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "uid": str(uuid.uuid4()), "resourceVersion": self._bump(),
                         "creationTimestamp": _now(), "labels": {"kubernetes.io/metadata.name": namespace}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }  # fmt: skip
        self._store[NAMESPACES][(None, namespace)] = obj
        await self._emit(spec, "ADDED", obj)

    def _apply_patch(
        self, request: rendering.Request, spec: ResourceSpec, old: dict[str, Any]
    ) -> dict[str, Any]:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = _json_body(request, None)
        if content_type == "application/json-patch+json":
            try:
                return jsonpatch.apply_patch(old, patch, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise Invalid(f"the JSON patch could not be applied: {exc}") from exc
        if content_type == "application/strategic-merge-patch+json" and spec.group:
            raise Invalid(
                f"{content_type} is not supported by {spec.api_version}, Kind={spec.kind}: use "
                "application/merge-patch+json or application/json-patch+json",
                status=415,
                reason="UnsupportedMediaType",
            )
        if content_type == "application/apply-patch+yaml":
            raise Invalid("server-side apply is not emulated", status=415, reason="UnsupportedMediaType")
        if not isinstance(patch, dict):
            raise Invalid("a merge patch must be a JSON object", status=400, reason="BadRequest")
        return merge_patch(old, patch)

    async def _patch(self, request: rendering.Request, spec: ResourceSpec) -> dict[str, Any]:
        old = self._get(spec, request.namespace, request.name)
        new = self._apply_patch(request, spec, old)
        return await self._store_update(spec, old, new, request.subresource)

    async def _replace(self, request: rendering.Request, spec: ResourceSpec) -> dict[str, Any]:
        old = self._get(spec, request.namespace, request.name)
        new = _json_body(request, {})
        expected = new.get("metadata", {}).get("resourceVersion")
        if expected and expected != old["metadata"]["resourceVersion"]:
            raise KubernetesError(
                status=409,
                reason="Conflict",
                message=(
                    f'Operation cannot be fulfilled on {spec.plural} "{request.name}": '
                    "the object has been modified"
                ),
            )
        return await self._store_update(spec, old, new, request.subresource)

    async def _store_update(
        self, spec: ResourceSpec, old: dict[str, Any], new: dict[str, Any], subresource: str | None
    ) -> dict[str, Any]:
        has_status = "status" in spec.subresources
        if subresource == "status" and has_status:
            # The status path changes status only (metadata edits sent there are dropped too).
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
        elif has_status:
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta = new.setdefault("metadata", {})
        for server_owned in (
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "namespace",
            "name",
        ):
            if server_owned in old["metadata"]:
                meta[server_owned] = old["metadata"][server_owned]
            else:
                meta.pop(server_owned, None)
        ignored = {"metadata", "status"} if has_status else {"metadata"}
        if {k: v for k, v in new.items() if k not in ignored} != {
            k: v for k, v in old.items() if k not in ignored
        }:
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        self._validate_meta(meta)
        if new == old:
            return old  # a no-op patch neither bumps resourceVersion nor wakes watchers
        meta["resourceVersion"] = self._bump()
        key = (meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(spec, key, new)
            return new
        self._store[spec.key][key] = new
        if spec.key == "apiextensions.k8s.io/v1/customresourcedefinitions":
            self._accept_crd(new)
        await self._emit(spec, "MODIFIED", new)
        return new

    async def _delete(self, spec: ResourceSpec, namespace: str | None, name: str | None) -> dict[str, Any]:
        obj = self._get(spec, namespace, name)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        if meta.get("finalizers"):
            obj = copy.deepcopy(obj)
            obj["metadata"].update(
                deletionTimestamp=_now(), deletionGracePeriodSeconds=0, resourceVersion=self._bump()
            )
            self._store[spec.key][(meta.get("namespace"), meta["name"])] = obj
            await self._emit(spec, "MODIFIED", obj)
            return obj
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()
        await self._remove(spec, (meta.get("namespace"), meta["name"]), obj)
        return obj

    async def _remove(self, spec: ResourceSpec, key: tuple[str | None, str], last: dict[str, Any]) -> None:
        self._store[spec.key].pop(key, None)
        await self._emit(spec, "DELETED", last)
        # Garbage collection: dependents whose owner is gone are deleted (background propagation).
        uid = last["metadata"].get("uid")
        for child_spec in list(self._specs.values()):
            for (namespace, name), child in list(self._store[child_spec.key].items()):
                owners = child["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in owners):
                    await self._delete(child_spec, namespace, name)

    def _accept_crd(self, crd: dict[str, Any]) -> None:
        for spec in specs_from_crd(crd):
            self.declare(spec)
        names = crd["spec"]["names"]
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": [v["name"] for v in crd["spec"]["versions"] if v.get("storage")],
            "conditions": [
                {"type": t, "status": "True", "reason": t, "message": "", "lastTransitionTime": _now()}
                for t in ("NamesAccepted", "Established")
            ],
        }


# ---------------------------------------------------------------------------------------------


def load_resources(sources: Iterable[str]) -> list[ResourceSpec]:
    """Resources from JSON text, or from .json/.yaml files or directories of them.

    Each document is either a CustomResourceDefinition manifest or a dict (or list of dicts) of
    ResourceSpec fields: group, version, plural, kind, namespaced, shortNames, subresources,
    printerColumns.
    """
    specs: list[ResourceSpec] = []
    for source in sources:
        path = Path(source)
        if source.lstrip().startswith(("[", "{")):
            documents = [json.loads(source)]
        elif path.is_dir():
            documents = [
                doc for f in sorted(path.glob("*.y*ml")) + sorted(path.glob("*.json")) for doc in _read(f)
            ]
        else:
            documents = _read(path)
        for doc in documents:
            for item in doc if isinstance(doc, list) else [doc]:
                if item and item.get("kind") == "CustomResourceDefinition":
                    specs.extend(specs_from_crd(item))
                elif item:
                    specs.append(ResourceSpec.from_dict(item))
    return specs


def _read(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


async def serve(port: int, specs: list[ResourceSpec], host: str = "127.0.0.1") -> None:
    emulator = SphinxxKubeEmulator()
    for spec in BUILTIN_RESOURCES + specs:
        emulator.declare(spec)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        print(f"kmock serving on {server.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.services.kmock_server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--resources",
        action="append",
        default=[],
        help="JSON text, or a .json/.yaml file or directory: resource specs or CRD manifests (repeatable)",
    )
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, load_resources(args.resources), host=args.host))


if __name__ == "__main__":
    main()
