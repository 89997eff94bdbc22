"""The operator's RBAC is exactly what it calls: no less (it would fail at run time), no more.

`sphinxx.operator.kube.RBAC_RULES` lists every verb on every resource the operator uses (its
own calls and kopf's). The chart's ClusterRole must grant exactly that set; in namespaced-only
mode each Role grants exactly its namespaced part, and nothing is granted cluster-wide. Secrets
are readable only by name (`rbac.secretNames`) and only with `get`.
"""

from __future__ import annotations

from typing import Any

from sphinxx.operator.kube import RBAC_RULES

from .conftest import RELEASE

# Resources in RBAC_RULES that are cluster-scoped: a Role cannot grant them (namespaced mode
# goes without; kopf then falls back to the namespaces it is given and one discovery scan).
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    ("kopf.dev", "clusterkopfpeerings"),
}


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples of rules that are not restricted to resource names."""
    out = set()
    for rule in rules:
        assert "nonResourceURLs" not in rule, rule
        if rule.get("resourceNames"):
            continue
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard grant: {rule}"
                    out.add((group, resource, verb))
    return out


def named(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for rule in rules if rule.get("resourceNames")]


EXPECTED = grants(RBAC_RULES)
EXPECTED_NAMESPACED = {g for g in EXPECTED if (g[0], g[1]) not in CLUSTER_SCOPED}


def test_the_operator_rules_are_known() -> None:
    # Guards the test itself: a rule list that lost its kopf or RayJob part would pass trivially.
    resources = {(g, r) for g, r, _ in EXPECTED}
    assert {("sphinxx.dev", "trainingruns"), ("ray.io", "rayjobs"), ("", "events")} <= resources
    assert CLUSTER_SCOPED <= resources


def test_cluster_role_grants_exactly_what_the_operator_calls(render) -> None:
    rendered = render({})
    role = rendered.one("ClusterRole", RELEASE)
    assert role["metadata"]["name"] == RELEASE
    assert grants(role["rules"]) == EXPECTED
    assert named(role["rules"]) == []
    binding = rendered.one("ClusterRoleBinding", RELEASE)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": RELEASE,
    }
    sa = rendered.one("ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    ]
    assert rendered.kinds("Role") == [] and rendered.kinds("RoleBinding") == []


def test_namespaced_mode_grants_only_namespaced_resources_in_each_namespace(render) -> None:
    rendered = render({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    operator_roles = [r for r in rendered.kinds("ClusterRole") if r["metadata"]["name"] == RELEASE]
    assert operator_roles == [] and rendered.kinds("ClusterRoleBinding") == []
    roles = rendered.kinds("Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert grants(role["rules"]) == EXPECTED_NAMESPACED
    bindings = {b["metadata"]["namespace"]: b for b in rendered.kinds("RoleBinding")}
    assert sorted(bindings) == ["team-a", "team-b"]
    for binding in bindings.values():
        assert (
            binding["roleRef"]["kind"] == "Role" and binding["subjects"][0]["namespace"] == "sphinxx-system"
        )


def test_secrets_are_readable_only_by_name(render) -> None:
    assert ("", "secrets") not in {(g, r) for g, r, _ in EXPECTED}, "the operator itself never lists secrets"
    for values in ({}, {"operator": {"watchNamespaces": ["team-a"]}}):
        values = values | {"rbac": {"secretNames": ["s3-creds", "mlflow-creds"]}}
        rendered = render(values)
        for role in rendered.kinds("ClusterRole") + rendered.kinds("Role"):
            if role["metadata"]["name"] != RELEASE:
                continue
            assert grants(role["rules"]) in (EXPECTED, EXPECTED_NAMESPACED)
            assert named(role["rules"]) == [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": ["s3-creds", "mlflow-creds"],
                    "verbs": ["get"],
                }
            ]


def test_user_roles_aggregate_into_view_and_edit(render) -> None:
    rendered = render({})
    viewer = rendered.one("ClusterRole", "-viewer")
    editor = rendered.one("ClusterRole", "-editor")
    assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert grants(viewer["rules"]) == {
        ("sphinxx.dev", r, v)
        for r in ("scalingsweeps", "trainingruns", "scalingsweeps/status", "trainingruns/status")
        for v in ("get", "list", "watch")
    }
    editable = grants(editor["rules"])
    # Users submit, annotate (resume), suspend and delete; the operator alone writes status.
    assert {("sphinxx.dev", "trainingruns", "patch"), ("sphinxx.dev", "scalingsweeps", "create")} <= editable
    assert {v for g, r, v in editable if r.endswith("/status")} == {"get", "list", "watch"}
    assert {r for g, r, v in editable} <= {
        "scalingsweeps",
        "trainingruns",
        "scalingsweeps/status",
        "trainingruns/status",
    }
    assert render({"rbac": {"userRoles": False}}).kinds("ClusterRole") == [
        rendered.one("ClusterRole", RELEASE)
    ]
