"""Pre-flight checks: a run whose inputs cannot be read gets a Blocked condition and an event
naming the field and the URI, and no RayJob; a run whose inputs are all there starts.

The operator runs with the pre-flight check on (`SPHINXX_PREFLIGHT=1`, the default in a cluster)
and the S3 credentials of the moto server, as it would with the Ray pods' Secret.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services.operator import OperatorServer, start_operator

from .conftest import Cluster, stays, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def preflight_operator(kube, s3_server, tmp_path_factory) -> Iterator[OperatorServer]:
    env = {**s3_server.env, "SPHINXX_PREFLIGHT": "1"}
    server = start_operator(tmp_path_factory.mktemp("preflight-operator"), kube, env=env)
    yield server
    server.process.stop()


def _bucket_with_inputs(s3_server) -> str:
    bucket = s3_server.new_bucket("preflight")
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="tok/tokenizer.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="data/dialog/manifest.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="weights/tiny/model.safetensors", Body=b"weights")
    return bucket


def _run(name: str, bucket: str, **model) -> dict:
    data = {
        "tokenizer": f"s3://{bucket}/tok",
        "sources": [{"name": "dialog", "uri": f"s3://{bucket}/data/dialog"}],
    }
    config = {"preset": "debug", "storage": {"uri": f"s3://{bucket}/runs"}, "data": data, "model": model}
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"config": config},
    }


def _blocked(cluster: Cluster, name: str):
    conditions = cluster.status("trainingruns", name).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Blocked" and c["status"] == "True"), None)


def test_unreadable_inputs_block_the_run_before_any_rayjob(preflight_operator, cluster, s3_server) -> None:
    bucket = _bucket_with_inputs(s3_server)
    missing = f"s3://{bucket}/weights/not-uploaded"
    cluster.kube.apply(_run("no-weights", bucket, llm_weights=missing), cluster.ns)
    blocked = wait_for(lambda: _blocked(cluster, "no-weights"), timeout=180, what="Blocked condition")
    assert blocked["reason"] == "InputsUnreadable"
    assert f"model.llm_weights: {missing} does not exist" in blocked["message"]
    assert cluster.status("trainingruns", "no-weights")["phase"] == "Pending"
    warnings = wait_for(
        lambda: [e for e in cluster.events("no-weights") if e[:2] == ("Warning", "InputsUnreadable")],
        what="event",
    )
    assert missing in warnings[0][2] and warnings[0][2].startswith("pre-flight check failed: ")
    stays(lambda: not cluster.rayjobs("no-weights"), seconds=3)

    # A tokenizer folder without a vocabulary and a source without its manifest: both named.
    s3_server.client().put_object(Bucket=bucket, Key="weights/tiny/README.md", Body=b"no weights here")
    bad = _run("bad-data", bucket, llm_weights=f"s3://{bucket}/weights/tiny")
    bad["spec"]["config"]["data"]["tokenizer"] = f"s3://{bucket}/weights"
    bad["spec"]["config"]["data"]["sources"].append({"name": "gone", "uri": f"s3://{bucket}/data/gone"})
    cluster.kube.apply(bad, cluster.ns)
    blocked = wait_for(lambda: _blocked(cluster, "bad-data"), timeout=180, what="Blocked condition")
    assert (
        f"data.tokenizer: s3://{bucket}/weights holds 2 files but none ending with tokenizer.json"
        in blocked["message"]
    )
    assert (
        f"data.sources[1] (gone): s3://{bucket}/data/gone/manifest.json does not exist" in blocked["message"]
    )
    assert "model.llm_weights" not in blocked["message"]
    stays(lambda: not cluster.rayjobs("bad-data"), seconds=2)


def test_readable_inputs_pass_and_the_run_starts(preflight_operator, cluster, s3_server) -> None:
    bucket = _bucket_with_inputs(s3_server)
    cluster.kube.apply(_run("good", bucket, llm_weights=f"s3://{bucket}/weights/tiny"), cluster.ns)
    wait_for(lambda: cluster.rayjobs("good"), timeout=180, what="the RayJob")
    # The operator creates the RayJob, then writes the status of that same pass.
    status = wait_for(
        lambda: cluster.status("trainingruns", "good").get("conditions"), timeout=30, what="the status"
    )
    conditions = {c["type"]: c for c in status}
    assert conditions["Blocked"]["status"] == "False" and conditions["Blocked"]["reason"] == "InputsReadable"
    # the write probe cleaned up after itself
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/").get("Contents", [])
    assert not [o["Key"] for o in listed if ".sphinxx-preflight" in o["Key"]]
