"""Credentials never belong in a spec: find them anywhere in one, free-form parts included.

A ScalingSweep or TrainingRun is readable by everyone with `get` on it, is copied into every
point, and its run config is stored next to the checkpoints and logged to MLflow as params. So a
key that names a credential (`aws_secret_access_key`, `password`, `token`, ...), a URI with a
password in it (`postgresql://user:pw@host/db`), or a value shaped like an AWS access key is
refused at admission, wherever it sits. Credentials reach the pods by Secret reference
(`resources.envFromSecrets`) or the pods' identity (IRSA), never through the spec.
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
    }
)
# ... and endings that do (`db_password`, `my_api_key`, `s3_secret_access_key`, `auth_token`).
SECRET_SUFFIXES = ("password", "passwd", "secretaccesskey", "secretkey", "apikey", "privatekey",
                   "accesstoken", "authtoken", "sessiontoken", "bearertoken", "clientsecret")  # fmt: skip
URI_WITH_PASSWORD = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]+:[^/@\s]+@")
AWS_ACCESS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
HOW = "credentials never go into a spec: put them in a Secret and name it in resources.envFromSecrets"


def _normal(key: str) -> str:
    return re.sub(r"[-_.]", "", key.lower())


def is_secret_key(key: str) -> bool:
    normal = _normal(key)
    return normal in SECRET_KEYS or normal.endswith(SECRET_SUFFIXES)


def findings(data: Any, path: str) -> Iterator[tuple[str, str]]:
    """(field path, what was found) for every credential-looking key or value under `data`."""
    if isinstance(data, dict):
        for key, value in data.items():
            where = join(path, str(key))
            if is_secret_key(str(key)) and value not in (None, "", {}, []):
                yield where, f"the key {key!r} holds a credential"
            yield from findings(value, where)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from findings(value, join(path, i))
    elif isinstance(data, str):
        if URI_WITH_PASSWORD.match(data):
            yield path, "the URI carries a password (user:password@)"
        elif AWS_ACCESS_KEY.search(data):
            yield path, "the value contains an AWS access key id"


def refuse_credentials(data: Any, path: str) -> None:
    """Raise SchemaError at the first credential found under `data`."""
    for where, what in findings(data, path):
        raise SchemaError(where, f"{what}; {HOW}")
