"""Credentials never belong in a spec: find them in every string of one, free-form parts included.

A ScalingSweep or TrainingRun is readable by everyone with `get` on it, is copied into every
point, and its run config is stored next to the checkpoints and logged to MLflow as params. So one
rule looks at every key, every value and every list entry of a spec, and refuses:

- a key that names a credential (`aws_secret_access_key`, `password`, `token`, ...) with a value;
- an entry of a Kubernetes env list (`env: [{name, value}]`, anywhere: pod patches included) with a
  literal `value`: env from a spec comes only through `valueFrom` (a `secretKeyRef`, or a
  `configMapKeyRef` for plain settings such as NCCL_DEBUG), so a secret never hides behind a
  harmless-looking name;
- any other `{name: ..., value: ...}` pair whose name names a credential;
- a `KEY=value` string whose KEY names one (`AWS_SECRET_ACCESS_KEY=...` in an annotation,
  `--password=...`, `?token=...` in a URI);
- a URI with a password in it (`postgresql://user:pw@host/db`);
- a value or key shaped like a known credential: an AWS access key id, a Hugging Face or GitHub
  token, a PEM private key.

Allowed, because they name a Secret instead of holding one (the whole allow-list): references by
name (`resources.envFromSecrets`, `secretName`, `valueFrom.secretKeyRef: {name, key}`), and keys
that merely mention a secret in a reference's shape (`secretKeyRef`, `secretName`).

The job's config reader (`run.load_config`), admission, `sphinxx sweep plan/check/run` and
`sphinxx validate` all apply this one rule. Credentials reach the pods by Secret reference or
the pods' identity (IRSA), never through the spec.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .fields import SchemaError, join

# Key names (lower-cased, without `_`, `-` and `.`) that always mean a credential.
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "accesskey",
        "secretkey",
        "privatekey",
        "clientsecret",
        "credentials",
        "awsaccesskeyid",
        "awssecretaccesskey",
        "awssessiontoken",
        "hftoken",
        "huggingfacehubtoken",
        "mlflowtrackingpassword",
        "mlflowtrackingtoken",
        "xamzsignature",  # a presigned URL's query: a credential for as long as it lives
        "xamzcredential",
    }
)
# ... and endings that do (`db_password`, `my_api_key`, `s3_secret_access_key`, `auth_token`).
SECRET_SUFFIXES = ("password", "passwd", "secretaccesskey", "secretkey", "apikey", "privatekey",
                   "accesstoken", "authtoken", "sessiontoken", "securitytoken", "bearertoken",
                   "clientsecret")  # fmt: skip
URI_WITH_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]+:[^/@\s]+@")
# Shapes that are a credential whatever their key: AWS access key ids, Hugging Face and GitHub
# tokens, PEM private keys.
TOKEN_SHAPES = (
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"), "a Hugging Face token"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "a GitHub token"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
)
# `KEY=value` inside a string: at its start or after a separator (space, `;`, `,`, `&`, `?`, `-`).
ASSIGNMENT = re.compile(r"(?:^|[\s;,&?\-])([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*([^\s;,&]+)")
HOW = "credentials never go into a spec: put them in a Secret and name it in resources.envFromSecrets"
ENV_HOW = (
    "env from a spec comes only through valueFrom: a secretKeyRef for credentials, a configMapKeyRef "
    "for plain settings"
)


def _normal(key: str) -> str:
    return re.sub(r"[-_.]", "", key.lower())


def is_secret_key(key: str) -> bool:
    normal = _normal(key)
    return normal in SECRET_KEYS or normal.endswith(SECRET_SUFFIXES)


def _shape(text: str) -> str | None:
    """What credential `text` contains by its shape alone, if any."""
    for pattern, what in TOKEN_SHAPES:
        if pattern.search(text):
            return what
    return None


def _in_string(text: str) -> str | None:
    if URI_WITH_PASSWORD.match(text):
        return "the URI carries a password (user:password@)"
    shape = _shape(text)
    if shape:
        return f"the value contains {shape}"
    for key, _ in ASSIGNMENT.findall(text):
        if is_secret_key(key):
            return f"the value assigns {key}=... (a credential)"
    return None


def _in_env_entry(entry: dict[Any, Any], in_env_list: bool) -> str | None:
    """A `{name, value}` pair: in an env list any literal value; elsewhere a credential's name."""
    name, value = entry.get("name"), entry.get("value")
    if not isinstance(name, str) or value in (None, ""):
        return None
    if in_env_list:
        return f"the env entry {name!r} sets a literal value"
    if is_secret_key(name):
        return f"the entry {name!r} holds a credential"
    return None


def findings(data: Any, path: str, in_env_list: bool = False) -> Iterator[tuple[str, str]]:
    """(field path, what was found) for every credential-looking key, value or entry under `data`."""
    if isinstance(data, dict):
        found = _in_env_entry(data, in_env_list)
        if found:
            rule = ENV_HOW if in_env_list else HOW
            yield join(path, "value"), f"{found}; {rule}"
        for key, value in data.items():
            where = join(path, str(key))
            if is_secret_key(str(key)) and value not in (None, "", {}, []):
                yield where, f"the key {key!r} holds a credential; {HOW}"
            elif shape := _shape(str(key)):
                yield where, f"the key contains {shape}; {HOW}"
            yield from findings(value, where, in_env_list=key == "env" and isinstance(value, list))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from findings(value, join(path, i), in_env_list)
    elif isinstance(data, str):
        found = _in_string(data)
        if found:
            yield path, f"{found}; {HOW}"


def refuse_credentials(data: Any, path: str) -> None:
    """Raise SchemaError at the first credential found under `data`."""
    for where, what in findings(data, path):
        raise SchemaError(where, what)
