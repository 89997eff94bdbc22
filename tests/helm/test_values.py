"""values.yaml is documented in place and values.schema.json rejects bad values at install time.

A bad value must fail `helm install` (here: `Chart.render`, which applies the schema the same
way) with a message that names the key at fault, not render a broken operator.
"""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from .conftest import CHART_DIR, NAMESPACE, RELEASE

VALUES_TEXT = (CHART_DIR / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)

BAD_VALUES = [
    ({"replicaCount": "two"}, "/replicaCount", "want integer"),
    ({"replicaCount": 0}, "/replicaCount", "minimum"),
    ({"operator": {"logformat": "json"}}, "/operator", "'logformat' not allowed"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat", "json"),
    ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0", "pattern"),
    ({"operator": {"timing": {"progressInterval": 0}}}, "/operator/timing/progressInterval", "minimum"),
    ({"operator": {"timing": {"runinterval": 5}}}, "/operator/timing", "'runinterval' not allowed"),
    ({"s3": {"bucket": "s3://ml-ckpt"}}, "/s3/bucket", "pattern"),
    ({"s3": {"endpointUrl": "minio:9000"}}, "/s3/endpointUrl", "pattern"),
    ({"mlflow": {"trackingUri": "mlflow:5000"}}, "/mlflow/trackingUri", "pattern"),
    (
        {"runtime": {"gpuTolerations": [{"key": "nvidia.com/gpu", "operator": "exists"}]}},
        "/runtime/gpuTolerations/0/operator",
        "Exists",
    ),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory", ""),
    ({"runtime": {"podDefaults": {"shmsize": "1Gi"}}}, "/runtime/podDefaults", "'shmsize' not allowed"),
    (
        {"runtime": {"podDefaults": {"schedulerName": "Volcano"}}},
        "/runtime/podDefaults/schedulerName",
        "pattern",
    ),
    ({"rbac": {"secretNames": "s3-creds"}}, "/rbac/secretNames", "want array"),
    (
        {"mlflow": {"server": {"enabled": True}}, "s3": {"bucket": "ml-ckpt"}},
        "/mlflow/server/backendStore/existingSecret",
        "minLength",
    ),
    (
        {
            "mlflow": {"server": {"enabled": True, "postgresql": {"enabled": True}}},
            "s3": {"bucket": "ml-ckpt"},
        },
        "/mlflow/server/postgresql/passwordSecret",
        "minLength",
    ),
    (
        {"mlflow": {"server": {"enabled": True, "backendStore": {"existingSecret": "db"}}}},
        "/s3/bucket",
        "minLength",
    ),
]


@pytest.mark.parametrize(("values", "where", "what"), BAD_VALUES, ids=[w for _, w, _ in BAD_VALUES])
def test_bad_values_are_rejected_with_the_key_named(chart: Any, values: dict, where: str, what: str) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    message = str(info.value)
    assert f"at '{where}'" in message and what in message, message


def test_defaults_and_the_documented_examples_pass(chart: Any) -> None:
    chart.validate_schema(VALUES)
    chart.validate_schema(
        {
            "s3": {"bucket": "ml-ckpt", "endpointUrl": "https://s3.eu-west-1.amazonaws.com"},
            "mlflow": {"trackingUri": "http://mlflow.mlflow:5000"},
            "runtime": {
                "gpuNodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "queueName": "team-a-gpu",
            },
            "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": 1073741824}},
        }
    )


def _leaves(values: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every key whose value is not a non-empty mapping (what a user sets)."""
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in MAP_VALUES:
            out += _leaves(value, path + ".")
        else:
            out.append(path)
    return out


# Keys whose value is itself a free-form mapping (documented as a whole).
MAP_VALUES = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "mlflow.server.resources",
    "mlflow.server.postgresql.resources",
    "runtime.podDefaults",  # the pod settings of a TrainingRun's resources (test_settings keeps them in step)
}


def test_every_value_is_documented_in_place() -> None:
    """Each key a user sets has a `# --` comment right above it (helm-docs style)."""
    lines = VALUES_TEXT.splitlines()
    documented = set()
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if i > 0 and lines[i - 1].strip().startswith("# --"):
            documented.add(path)
    missing = [path for path in _leaves(VALUES) if path not in documented]
    assert missing == [], f"values without a `# --` comment: {missing}"


def _schema_paths(schema: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        out.add(path)
        if sub.get("type") == "object" and "properties" in sub and path not in MAP_VALUES:
            out |= _schema_paths(sub, path + ".")
    return out


def _value_paths(values: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        out.add(path)
        if isinstance(value, dict) and path not in MAP_VALUES and path not in FREE_MAPS:
            out |= _value_paths(value, path + ".")
    return out


FREE_MAPS = {
    "runtime.gpuNodeSelector",
    "serviceAccount.annotations",
    "podAnnotations",
    "podLabels",
    "nodeSelector",
    "affinity",
}


def test_schema_and_values_name_the_same_keys(chart: Any) -> None:
    schema = chart.schema
    assert schema is not None
    # `global` is Helm's, passed down by parent charts.
    assert _schema_paths(schema) - {"global"} == _value_paths(VALUES)
