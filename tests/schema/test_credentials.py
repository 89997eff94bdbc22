"""The credential rule (`sphinxx.schema.credentials`): every string of a spec, one small allow-list."""

from __future__ import annotations

from pathlib import Path

import pytest

from sphinxx.schema.credentials import findings, refuse_credentials
from sphinxx.schema.fields import SchemaError
from sphinxx.schema.run import load_config

from .corpus import RUN_BASE

ALLOWED = {
    "secret reference by name": {"resources": {"envFromSecrets": ["s3-credentials"]}},
    "valueFrom secretKeyRef": {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}]},
    "valueFrom configMapKeyRef": {"env": [{"name": "NCCL_DEBUG", "valueFrom": {"configMapKeyRef": {"name": "nccl", "key": "debug"}}}]},
    "a secretName reference": {"volumes": [{"name": "w", "csi": {"nodePublishSecretRef": {"name": "x"}, "secretName": "y"}}]},
    "an empty password key": {"tracking": {"password": ""}},
    "a plain assignment": {"podAnnotations": {"example.com/args": "--steps=10 LOG_LEVEL=debug"}},
    "a URI with a user but no password": {"tracking": {"uri": "postgresql://mlflow@db/mlflow"}},
    "a name/value pair outside env with a plain name": {"items": [{"name": "color", "value": "blue"}]},
    "hf_ too short to be a token": {"note": "hf_abc"},
}  # fmt: skip

REFUSED = {
    "env literal value": ({"env": [{"name": "ANYTHING", "value": "x"}]}, "s.env[0].value", "literal value"),
    "env in a nested container": ({"spec": {"containers": [{"name": "c", "env": [{"name": "A", "valueFrom": {}}, {"name": "B", "value": "1"}]}]}}, "s.spec.containers[0].env[1].value", "valueFrom"),
    "name/value pair with a credential name": ({"items": [{"name": "DB_PASSWORD", "value": "x"}]}, "s.items[0].value", "'DB_PASSWORD'"),
    "KEY=value at the start": ({"a": "AWS_SECRET_ACCESS_KEY=abc"}, "s.a", "AWS_SECRET_ACCESS_KEY="),
    "KEY=value after a space": ({"a": "run --x 1 api_key=abc"}, "s.a", "api_key="),
    "a --flag=value": ({"a": "--db-password=abc"}, "s.a", "db-password="),
    "a query parameter": ({"a": "https://h/x?a=1&auth_token=abc"}, "s.a", "auth_token="),
    "a URI with a password": ({"a": "postgresql://u:pw@db/x"}, "s.a", "password"),
    "an AWS access key id as a key": ({"AKIAIOSFODNN7EXAMPLE": 1}, "s.AKIAIOSFODNN7EXAMPLE", "AWS access key id"),
    "an AWS access key id in a list": ({"a": ["ok", "x AKIAIOSFODNN7EXAMPLE"]}, "s.a[1]", "AWS access key id"),
    "a GitHub token": ({"a": "ghp_" + "x" * 36}, "s.a", "GitHub token"),
    "a PEM private key": ({"a": "-----BEGIN PRIVATE KEY-----"}, "s.a", "private key"),
    "a credential-named key": ({"hf_token": "abc"}, "s.hf_token", "holds a credential"),
}  # fmt: skip


@pytest.mark.parametrize("spec", ALLOWED.values(), ids=list(ALLOWED))
def test_allowed_shapes_pass(spec: dict) -> None:
    assert list(findings(spec, "s")) == []


@pytest.mark.parametrize(("spec", "path", "says"), REFUSED.values(), ids=list(REFUSED))
def test_refused_shapes_name_the_path_and_never_echo_the_secret(spec: dict, path: str, says: str) -> None:
    with pytest.raises(SchemaError) as err:
        refuse_credentials(spec, "s")
    assert err.value.path == path and says in err.value.reason, str(err.value)
    assert "abc" not in str(err.value) and "pw@" not in str(err.value)


def test_the_jobs_config_reader_applies_the_rule_to_files_data_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("preset: debug\ntracking:\n  uri: postgresql://mlflow:hunter2@db/mlflow\n")
    with pytest.raises(SchemaError, match=r"^tracking\.uri: the URI carries a password") as err:
        load_config(file=str(config))
    assert "hunter2" not in str(err.value)
    with pytest.raises(SchemaError, match=r"^model\.llm_weights: the value contains an AWS access key id"):
        load_config(data={**RUN_BASE, "model": {"llm_weights": "s3://AKIAIOSFODNN7EXAMPLE@b/w"}})
    with pytest.raises(SchemaError, match=r"^tracking\.password: the key 'password' holds a credential"):
        load_config(data=RUN_BASE, overrides=["tracking.password=hunter2"])
    with pytest.raises(SchemaError, match=r"^tracking\.uri: the URI carries a password"):
        load_config(data=RUN_BASE, overrides=["tracking.uri=postgresql://u:hunter2@db/x"])
