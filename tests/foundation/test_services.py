"""The real local servers start, answer, and are reachable the way production code reaches them."""

from __future__ import annotations

import time

import boto3
import s3fs


def test_s3_put_get_boto3_and_s3fs(s3_bucket: str, s3_env) -> None:
    # boto3 picks the endpoint from AWS_ENDPOINT_URL, as it would for MinIO.
    client = boto3.client("s3")
    client.put_object(Bucket=s3_bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="a/b.txt")["Body"].read() == b"hello"

    fs = s3fs.S3FileSystem(endpoint_url=s3_env.endpoint_url, skip_instance_cache=True)
    assert fs.cat(f"{s3_bucket}/a/b.txt") == b"hello"
    fs.pipe(f"{s3_bucket}/c.bin", b"\x00\x01")
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert listed == {"a/b.txt", "c.bin"}


def test_s3_buckets_are_isolated(s3_env) -> None:
    first, second = s3_env.new_bucket(), s3_env.new_bucket()
    client = s3_env.client()
    client.put_object(Bucket=first, Key="only-here", Body=b"x")
    assert client.list_objects_v2(Bucket=second).get("KeyCount") == 0


def test_mlflow_log_and_read_back(mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    experiment_id = client.create_experiment(f"fixture-{time.time_ns()}")
    run = client.create_run(experiment_id)
    for step, value in enumerate([3.0, 2.5, 2.0]):
        client.log_metric(run.info.run_id, "loss", value, step=step)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.5), (2, 2.0)]


def test_ray_runs_remote_tasks(ray_cluster: str) -> None:
    import ray

    @ray.remote
    def square(x: int) -> int:
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray.cluster_resources()["CPU"] >= 2
