"""Checkpoint commit and restore through sphinxx.storage vs raw boto3 transfers, against a moto S3 server.

    .venv/bin/python bench/storage.py                      # ~200 MiB, starts its own moto_server
    .venv/bin/python bench/storage.py --size-mib 50 --repeats 1
    .venv/bin/python bench/storage.py --endpoint-url http://127.0.0.1:9000   # an existing S3 / MinIO

Prints JSON lines: one per timed run, then one summary per operation. Three implementations move
the same bytes, interleaved and in rotating order:

- `sphinxx`: everything a commit does (a sha256 of every file: on this plain-HTTP server the
  part hashes botocore signs, docs/storage.md "File digests"; writer record, manifest with
  If-None-Match, read-back, latest.json) and everything a restore does (ranged parallel GETs,
  size + sha256 check);
- `raw-parallel`: the fastest plain transfer boto3 / s3transfer can do on this server: every
  file submitted at once to one TransferManager, its concurrency tuned over 4, 8, 16 and 32
  before timing (the best is kept), no hashing, no manifest. What our protocol costs is
  `sphinxx / raw-parallel` (goal: <= 1.1 for both commit and restore);
- `boto3-sequential`: `upload_file` / `download_file` file after file, boto3's defaults.

moto is a single Python process: absolute speeds say little about real S3; the ratios on the same
server in the same run are the numbers to read. moto keeps every object in memory, so each run's
objects are deleted after it (untimed): otherwise later runs meet a bigger, slower server. The
summary gives the ratio of the medians and `paired_ratio_median`, the median of each round's
sphinxx / raw-parallel (the same server state and machine load): on a 2-core machine shared
with the server the single runs vary by +-20%, and the paired figure moves less, so `goal_met`
(<= 1.1) reads the paired figure. Both are printed: quote both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

MiB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200, help="total checkpoint size (default 200)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per implementation (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of both before timing")
    parser.add_argument("--endpoint-url", help="use this S3 endpoint instead of starting moto_server")
    parser.add_argument("--file-concurrency", type=int, default=4)
    parser.add_argument("--part-concurrency", type=int, default=4)
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = None if args.endpoint_url else _start_moto()
    endpoint = args.endpoint_url or server[1]
    work = tempfile.mkdtemp(prefix="bench-storage-")
    try:
        _run(args, endpoint, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server[0].terminate()
            server[0].wait(10)


def _run(args: argparse.Namespace, endpoint: str, work: str) -> None:
    import boto3

    from sphinxx.storage import CheckpointStore, StorageOptions

    local = os.path.join(work, "ckpt")
    files = _make_checkpoint(local, args.size_mib)
    total = sum(os.path.getsize(os.path.join(local, f)) for f in files)
    _emit(op="setup", files=len(files), bytes=total, endpoint=endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    options = StorageOptions(
        endpoint_url=endpoint, file_concurrency=args.file_concurrency, part_concurrency=args.part_concurrency
    )
    times: dict[tuple[str, str], list[float]] = {}
    concurrency = _tune(client, bucket, local, files, work)
    _emit(op="tune", raw_parallel_concurrency=concurrency)
    impls = ("sphinxx", "raw-parallel", "boto3-sequential")

    for rep in range(-args.warmup, args.repeats):  # negative reps: untimed warm-up of server and clients
        # Rotate the order so no implementation always runs on a warmer (or more loaded) server.
        shift = rep % len(impls)
        for impl in impls[shift:] + impls[:shift]:
            run_id = f"{impl}-{rep}"
            restore = os.path.join(work, f"restore-{run_id}")
            if impl == "raw-parallel":
                keys = [f"bench/{run_id}/{f}" for f in files]
                up = _timed(lambda k=keys: _parallel(client, "upload", bucket, local, files, k, concurrency))
                down = _timed(
                    lambda k=keys, r=restore: _parallel(client, "download", bucket, r, files, k, concurrency)
                )
            elif impl == "sphinxx":
                store = CheckpointStore(f"s3://{bucket}/bench", run_id, options=options)
                store.latest()  # build the client outside the timed part, as a long-running trainer would
                up = _timed(lambda s=store: s.save(1, local, metadata={"metrics": {"loss": 1.0}}))
                down = _timed(lambda s=store, r=restore: s.download(1, r))
            else:
                keys = [f"bench/{run_id}/{f}" for f in files]
                up = _timed(
                    lambda k=keys: [
                        client.upload_file(os.path.join(local, f), bucket, key)
                        for f, key in zip(files, k, strict=True)
                    ]
                )
                down = _timed(
                    lambda k=keys, r=restore: [
                        _download(client, bucket, key, os.path.join(r, f))
                        for f, key in zip(files, k, strict=True)
                    ]
                )
            _delete_prefix(client, bucket, f"bench/{run_id}/")  # moto holds every object in memory
            for op, (seconds, cpu) in (("commit", up), ("restore", down)):
                if rep < 0:
                    continue
                times.setdefault((op, impl), []).append(seconds)
                _emit(op=op, impl=impl, rep=rep, seconds=round(seconds, 3), client_cpu_s=round(cpu, 2),
                      mib_per_s=round(total / MiB / seconds, 1))  # fmt: skip
            shutil.rmtree(restore, ignore_errors=True)
    for op in ("commit", "restore"):
        ours = statistics.median(times[(op, "sphinxx")])
        raw = statistics.median(times[(op, "raw-parallel")])
        sequential = statistics.median(times[(op, "boto3-sequential")])
        # Paired: each round's sphinxx over that round's raw-parallel (the same server state and
        # load), then the median; steadier than the ratio of medians when the machine drifts.
        paired = statistics.median(
            o / r for o, r in zip(times[(op, "sphinxx")], times[(op, "raw-parallel")], strict=True)
        )
        _emit(op=op, summary=True, sphinxx_s=round(ours, 3), raw_parallel_s=round(raw, 3),
              boto3_sequential_s=round(sequential, 3), ratio_sphinxx_over_raw_parallel=round(ours / raw, 3),
              paired_ratio_median=round(paired, 3),
              goal_met=paired <= 1.1, ratio_sequential_over_sphinxx=round(sequential / ours, 2),
              raw_parallel_concurrency=concurrency, bytes=total, cpus=os.cpu_count(),
              max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))  # fmt: skip


def _make_checkpoint(root: str, size_mib: int) -> list[str]:
    """A ZeRO-like mix: a few big model shards, mid-size optimizer shards, many small files."""
    scale = size_mib / 200
    layout = {f"model/shard-{i}.bin": int(64 * MiB * scale) for i in range(2)}
    layout |= {f"optim/rank-{i:02d}.pt": int(16 * MiB * scale) for i in range(4)}
    layout |= {f"extra/rng-{i:02d}.bin": int(1 * MiB * scale) for i in range(8)}
    layout |= {f"extra/meta-{i:02d}.json": 4096 for i in range(16)}
    block = os.urandom(MiB)  # random, incompressible; reused to keep setup fast
    for rel, size in layout.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            for offset in range(0, size, MiB):
                f.write(block[: min(MiB, size - offset)])
    return sorted(layout)


def _parallel(
    client, direction: str, bucket: str, root: str, files: list[str], keys: list[str], concurrency: int
) -> None:
    """Every file at once through one s3transfer TransferManager (the raw-parallel baseline)."""
    from boto3.s3.transfer import TransferConfig
    from s3transfer.manager import TransferManager

    config = TransferConfig(
        max_concurrency=concurrency, multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB
    )
    with TransferManager(client, config) as manager:
        futures = []
        for rel, key in zip(files, keys, strict=True):
            path = os.path.join(root, rel)
            if direction == "upload":
                futures.append(manager.upload(path, bucket, key))
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                futures.append(manager.download(bucket, key, path))
        for future in futures:
            future.result()


def _tune(client, bucket: str, local: str, files: list[str], work: str) -> int:
    """The raw-parallel baseline's best concurrency on this server (one upload + download each)."""
    best, choice = float("inf"), 8
    for concurrency in (4, 8, 16, 32):
        keys = [f"tune/{concurrency}/{f}" for f in files]
        restore = os.path.join(work, f"tune-{concurrency}")
        seconds = _timed(
            lambda k=keys, c=concurrency: _parallel(client, "upload", bucket, local, files, k, c)
        )[0]
        seconds += _timed(
            lambda k=keys, r=restore, c=concurrency: _parallel(client, "download", bucket, r, files, k, c)
        )[0]
        shutil.rmtree(restore, ignore_errors=True)
        _delete_prefix(client, bucket, f"tune/{concurrency}/")
        if seconds < best:
            best, choice = seconds, concurrency
    return choice


def _delete_prefix(client, bucket: str, prefix: str) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def _download(client, bucket: str, key: str, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    client.download_file(bucket, key, path)


def _timed(fn) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of this (client) process: on a small machine the
    client's CPU competes with the server's."""
    cpu0, start = _cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - start, _cpu() - cpu0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(**fields) -> None:
    print(json.dumps({"bench": "storage", **fields}), flush=True)


def _start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("moto_server did not start within 60 s")


if __name__ == "__main__":
    main()
