"""Staging model weights on a node (sphinxx.storage.stage) vs a raw parallel download, against moto S3.

    .venv/bin/python bench/stage.py                    # a ~200 MiB "model folder", starts its own moto_server
    .venv/bin/python bench/stage.py --size-mib 50 --repeats 1

Prints JSON lines: one per timed run, then one summary. Implementations, interleaved in rotating
order on the same server:

- `stage-cold`: `stage(uri, select=checkpoint_files)` into an empty cache: listing, per-file locks,
  ranged parallel GETs, size and ETag (MD5) check, rename, record;
- `raw-parallel`: every selected file at once through one s3transfer TransferManager at the best
  concurrency of 4/8/16/32 (tuned first), no check (bench/storage.py's baseline);
- `stage-warm`: `stage` again into the filled cache (what a retry or the next point on the node
  pays): a listing and a stat per file.

What staging costs over a plain download is `stage-cold / raw-parallel`; its MB/s is the staging
throughput. moto is one Python process on this machine: read the ratios, not the absolute speeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from storage import MiB, _parallel, _start_moto, _timed, _tune  # noqa: E402  (bench/storage.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=200, help="total weights (default 200)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per implementation (median reported)"
    )
    parser.add_argument("--endpoint-url", help="use this S3 endpoint instead of starting moto_server")
    args = parser.parse_args()
    for key, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(key, value)
    server = None if args.endpoint_url else _start_moto()
    endpoint = args.endpoint_url or server[1]
    work = tempfile.mkdtemp(prefix="bench-stage-")
    try:
        _run(args, endpoint, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server[0].terminate()


def _model_folder(root: str, size_mib: int) -> list[str]:
    """A Hugging Face model folder: safetensors shards, their index, a config, a tokenizer, and a
    `.bin` copy of the weights that staging must skip."""
    shards = 4
    layout = {
        f"model-{i:05d}-of-{shards:05d}.safetensors": size_mib * MiB // shards for i in range(1, shards + 1)
    }
    layout |= {"model.safetensors.index.json": 4096, "config.json": 1024, "tokenizer.json": 2 * MiB,
               "pytorch_model.bin": 8 * MiB}  # fmt: skip
    block = os.urandom(MiB)
    for rel, size in layout.items():
        with open(os.path.join(root, rel), "wb") as f:
            for offset in range(0, size, MiB):
                f.write(block[: min(MiB, size - offset)])
    return sorted(layout)


def _run(args: argparse.Namespace, endpoint: str, work: str) -> None:
    import boto3

    from sphinxx.model.convert import checkpoint_files
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.stage import stage

    local = os.path.join(work, "model")
    os.makedirs(local)
    files = _model_folder(local, args.size_mib)
    chosen = checkpoint_files(files)
    total = sum(os.path.getsize(os.path.join(local, f)) for f in chosen)
    client = boto3.client("s3", endpoint_url=endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    _parallel(client, "upload", bucket, local, files, [f"weights/{f}" for f in files], 16)
    concurrency = _tune(client, bucket, local, chosen, work)
    _emit(op="setup", files=len(chosen), bytes=total, skipped=sorted(set(files) - set(chosen)),
          raw_parallel_concurrency=concurrency, endpoint=endpoint)  # fmt: skip
    options = StorageOptions(endpoint_url=endpoint)
    uri = f"s3://{bucket}/weights"
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the progress lines are not what is measured
    stage(uri, root=os.path.join(work, "warmup"), select=checkpoint_files, options=options, log=devnull)
    times: dict[str, list[float]] = {}
    impls = ("stage-cold", "raw-parallel")
    for rep in range(args.repeats):
        for impl in impls[rep % 2 :] + impls[: rep % 2]:
            root = os.path.join(work, f"{impl}-{rep}")
            if impl == "raw-parallel":
                keys = [f"weights/{f}" for f in chosen]
                seconds, cpu = _timed(
                    lambda k=keys, r=root: _parallel(client, "download", bucket, r, chosen, k, concurrency)
                )
            else:
                seconds, cpu = _timed(
                    lambda r=root: stage(uri, root=r, select=checkpoint_files, options=options, log=devnull)
                )
                warm = _timed(
                    lambda r=root: stage(uri, root=r, select=checkpoint_files, options=options, log=devnull)
                )
                times.setdefault("stage-warm", []).append(warm[0])
                _emit(op="stage-warm", rep=rep, seconds=round(warm[0], 4))
            times.setdefault(impl, []).append(seconds)
            _emit(op=impl, rep=rep, seconds=round(seconds, 3), client_cpu_s=round(cpu, 2),
                  mb_per_s=round(total / 1e6 / seconds, 1))  # fmt: skip
            shutil.rmtree(root, ignore_errors=True)
    cold, raw, warm = (statistics.median(times[k]) for k in ("stage-cold", "raw-parallel", "stage-warm"))
    _emit(op="summary", stage_cold_s=round(cold, 3), raw_parallel_s=round(raw, 3),
          stage_warm_s=round(warm, 4), ratio_stage_over_raw_parallel=round(cold / raw, 3),
          stage_mb_per_s=round(total / 1e6 / cold, 1), raw_parallel_mb_per_s=round(total / 1e6 / raw, 1),
          bytes=total, cpus=os.cpu_count())  # fmt: skip


def _emit(**fields) -> None:
    print(json.dumps({"bench": "stage", **fields}), flush=True)


if __name__ == "__main__":
    main()
