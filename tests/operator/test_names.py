"""Names follow docs/operator.md, "Names": deterministic, DNS-1035, within KubeRay's 47 characters."""

from __future__ import annotations

import hashlib
import re

import pytest

from sphinxx.operator import names
from sphinxx.schema.run import json_schema as config_schema

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.mark.parametrize(
    "name", ["demo", "a" * 63, "9lives", "Mixed_Case.Name", "sweep-tinyllama-1.1b-d25", "x-" * 30]
)
def test_rayjob_names_are_short_dns1035_and_hashed(name: str) -> None:
    rayjob = names.rayjob_name("ns", name, "uid-1", 3)
    assert len(rayjob) <= 47 and DNS1035.match(rayjob), rayjob
    # The suffix is the documented hash, computed independently here.
    expected = hashlib.sha256(f"ns/{name}/uid-1/3".encode()).hexdigest()[:6]
    assert rayjob.endswith(f"-a3-{expected}")
    assert rayjob == names.rayjob_name("ns", name, "uid-1", 3)
    assert rayjob != names.rayjob_name("ns", name, "uid-1", 4)
    assert rayjob != names.rayjob_name("ns", name, "uid-2", 3)


def test_run_id_is_a_valid_stable_run_name() -> None:
    pattern = config_schema()["properties"]["run_id"]["pattern"]
    for name in ("demo", "a" * 63, "sweep.with.dots", "x-" * 40):
        run_id = names.run_id("ns", name, "uid")
        assert len(run_id) <= 63 and re.match(pattern, run_id), run_id
        assert run_id == names.run_id("ns", name, "uid") != names.run_id("ns", name, "other-uid")
