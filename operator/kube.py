"""The one place where the operator calls the Kubernetes API (kopf only watches and triggers).

A thin wrapper over the official `kubernetes` client: dicts in, dicts out, 404 -> None, 409 on
create -> the existing object (deterministic names make creates idempotent). `RBAC_RULES` lists
every verb on every resource the operator uses, its own and kopf's; the Helm chart's ClusterRole
is checked against it by a test. The read-only calls at the end of `Kube` (CRDs, Deployments,
pods, nodes, Secrets, service accounts, peering objects) are `sphinxx doctor`'s, made with the
user's kubeconfig, never the operator's: they are not in `RBAC_RULES`.
"""

from __future__ import annotations

import builtins
import datetime
import json
import os
import threading
from typing import Any, cast

from . import names

# name -> (group, version, plural)
RESOURCES = {
    "scalingsweeps": (names.GROUP, names.VERSION, "scalingsweeps"),
    "trainingruns": (names.GROUP, names.VERSION, "trainingruns"),
    "rayjobs": ("ray.io", "v1", "rayjobs"),
    "rayclusters": ("ray.io", "v1", "rayclusters"),
}

RBAC_RULES: list[dict[str, list[str]]] = [
    # Our resources: kopf watches them and patches annotations/finalizers; we create the points.
    {
        "apiGroups": [names.GROUP],
        "resources": ["scalingsweeps", "trainingruns"],
        "verbs": ["create", "delete", "get", "list", "patch", "watch"],
    },
    {
        "apiGroups": [names.GROUP],
        "resources": ["scalingsweeps/status", "trainingruns/status"],
        "verbs": ["get", "patch"],
    },
    # One RayJob per attempt; elastic bounds are patched on the RayCluster the RayJob made.
    {
        "apiGroups": ["ray.io"],
        "resources": ["rayjobs"],
        "verbs": ["create", "delete", "get", "list", "patch", "watch"],
    },
    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    # kopf: resource discovery, namespace scoping, peering (leader election).
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings", "kopfpeerings"],
        "verbs": ["get", "list", "patch", "watch"],
    },
]

REQUEST_TIMEOUT = 30.0
EVENT_SOURCE = {"component": names.MANAGER}


class Kube:
    """Typed access to the resources in RESOURCES, plus events."""

    def __init__(self, api_client: Any = None):
        # Here, not at the top: the client takes ~1 s to import, and RESOURCES / RBAC_RULES are read
        # without it (the chart's tests, `kubectl sphinxx --help`).
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
                api_client = client.ApiClient()
            except config.ConfigException:
                api_client = config.new_client_from_config()
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)

    @staticmethod
    def _missing(err: Exception, *codes: int) -> bool:
        # Lazy for the same reason (by now __init__ has loaded it).
        from kubernetes.client.rest import ApiException

        return isinstance(err, ApiException) and err.status in codes

    def get_fresh(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """`get` from the API server itself, even where a cache answers `get` (cache.CachedKube)."""
        return Kube.get(self, resource, namespace, name)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        group, version, plural = RESOURCES[resource]
        try:
            return _obj(
                self.custom.get_namespaced_custom_object(
                    group, version, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except Exception as err:
            if self._missing(err, 404):
                return None
            raise

    def list(self, resource: str, namespace: str, labels: str = "") -> list[dict[str, Any]]:
        group, version, plural = RESOURCES[resource]
        result = _obj(
            self.custom.list_namespaced_custom_object(
                group,
                version,
                namespace,
                plural,
                label_selector=labels or None,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )
        return builtins.list(result.get("items") or [])

    def create(self, resource: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """(object, created): a 409 returns the object that is already there."""
        group, version, plural = RESOURCES[resource]
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            created = self.custom.create_namespaced_custom_object(
                group, version, namespace, plural, body, _request_timeout=REQUEST_TIMEOUT
            )
            return _obj(created), True
        except Exception as err:
            if not self._missing(err, 409):
                raise
        existing = self.get(resource, namespace, name)
        if existing is None:  # deleted between the 409 and the read: let the caller retry
            raise RuntimeError(f"{resource} {namespace}/{name} conflicted on create but is gone")
        return existing, False

    def patch(self, resource: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Merge patch of the main resource (None when the object is gone)."""
        group, version, plural = RESOURCES[resource]
        try:
            return _obj(
                self.custom.patch_namespaced_custom_object(
                    group, version, namespace, plural, name, patch, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except Exception as err:
            if self._missing(err, 404):
                return None
            raise

    def patch_json(
        self, resource: str, namespace: str, name: str, ops: builtins.list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """JSON patch (with `test` operations for optimistic concurrency); None when gone."""
        group, version, plural = RESOURCES[resource]
        try:
            return _obj(
                self.custom.patch_namespaced_custom_object(
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    ops,
                    _content_type="application/json-patch+json",
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )
        except Exception as err:
            if self._missing(err, 404):
                return None
            raise

    def patch_status(
        self, resource: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge patch of the status subresource (lists such as conditions are sent whole)."""
        group, version, plural = RESOURCES[resource]
        try:
            return _obj(
                self.custom.patch_namespaced_custom_object_status(
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    {"status": status},
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )
        except Exception as err:
            if self._missing(err, 404):
                return None
            raise

    def delete(self, resource: str, namespace: str, name: str) -> bool:
        group, version, plural = RESOURCES[resource]
        try:
            self.custom.delete_namespaced_custom_object(
                group,
                version,
                namespace,
                plural,
                name,
                propagation_policy="Background",
                _request_timeout=REQUEST_TIMEOUT,
            )
            return True
        except Exception as err:
            if self._missing(err, 404):
                return False
            raise

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on `obj` (what `kubectl describe` shows)."""
        meta = obj["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", names.API_VERSION),
                "kind": obj.get("kind", ""),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": EVENT_SOURCE,
            "reportingComponent": names.MANAGER,
        }
        # The client accepts a plain dict for any model (its stubs name only the model class).
        self.core.create_namespaced_event(meta["namespace"], body, _request_timeout=REQUEST_TIMEOUT)  # type: ignore[arg-type]

    def events(self, namespace: str, name: str) -> builtins.list[tuple[str, str, str]]:
        """(type, reason, message) of the Events on object `name`, oldest first (the plugin's answers)."""
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}", _request_timeout=REQUEST_TIMEOUT
        ).items
        ordered = sorted(items, key=lambda e: str(e.last_timestamp or e.first_timestamp or ""))
        return [(str(e.type), str(e.reason), str(e.message)) for e in ordered]

    # ------------------------------------------------------------------ `sphinxx doctor`'s reads

    @staticmethod
    def status_code(err: Exception) -> int | None:
        """The HTTP status of an API error (403: not allowed; 404: not found), None for any other error."""
        from kubernetes.client.rest import ApiException  # lazy, as in _missing

        return err.status if isinstance(err, ApiException) else None

    @staticmethod
    def _raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The JSON the API sent, unparsed by the client's models (which drop fields they do not know,
        such as parts of a CRD schema)."""
        response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        return cast(dict[str, Any], json.loads(response.data))

    def _read(self, call: Any, *args: Any) -> dict[str, Any] | None:
        try:
            return self._raw(call, *args)
        except Exception as err:
            if self._missing(err, 404):
                return None
            raise

    def crd(self, name: str) -> dict[str, Any] | None:
        """The CustomResourceDefinition `name` (`<plural>.<group>`), None when absent."""
        return self._read(self.extensions.read_custom_resource_definition, name)

    def deployments(self, namespace: str | None, labels: str) -> builtins.list[dict[str, Any]]:
        """Deployments with these labels in `namespace`, or in every namespace (None)."""
        if namespace is None:
            found = self._raw(self.apps.list_deployment_for_all_namespaces, label_selector=labels)
        else:
            found = self._raw(self.apps.list_namespaced_deployment, namespace, label_selector=labels)
        return builtins.list(found.get("items") or [])

    def pods(self, namespace: str, labels: str) -> builtins.list[dict[str, Any]]:
        found = self._raw(self.core.list_namespaced_pod, namespace, label_selector=labels)
        return builtins.list(found.get("items") or [])

    def nodes(self) -> builtins.list[dict[str, Any]]:
        return builtins.list(self._raw(self.core.list_node).get("items") or [])

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret (values base64-encoded, as the API serves them), None when absent."""
        return self._read(self.core.read_namespaced_secret, name, namespace)

    def service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_service_account, name, namespace)

    def peering(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        """kopf's peering object: a ClusterKopfPeering (namespace None) or a KopfPeering."""
        try:
            if namespace is None:
                got = self.custom.get_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", name, _request_timeout=REQUEST_TIMEOUT
                )
            else:
                got = self.custom.get_namespaced_custom_object(
                    "kopf.dev", "v1", namespace, "kopfpeerings", name, _request_timeout=REQUEST_TIMEOUT
                )
            return _obj(got)
        except Exception as err:
            if self._missing(err, 404):
                return None
            raise


def from_kubeconfig(kubeconfig: str | None, context: str | None) -> tuple[Kube, str]:
    """A client from a kubeconfig (KUBECONFIG / ~/.kube/config when None), as kubectl builds one,
    and the namespace its context names ("default" when none)."""
    from kubernetes import config  # ~1 s to import: only a command that talks to the API pays it

    # $KUBECONFIG now, not as the client read it when first imported (its default path).
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    return Kube(config.new_client_from_config(config_file=kubeconfig, context=context)), namespace


_default: Kube | None = None
_default_lock = threading.Lock()


def default() -> Kube:
    """The process-wide client (built from in-cluster config or KUBECONFIG on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Kube()
        return _default


def _obj(result: object) -> dict[str, Any]:
    """The client returns custom objects as plain JSON dicts (typed `object` in its stubs)."""
    return cast(dict[str, Any], result)
