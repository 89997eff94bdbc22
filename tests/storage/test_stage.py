"""Node-local staging (storage/stage.py) against the moto S3 server, requests counted at a proxy."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sphinxx.storage import StorageOptions
from sphinxx.storage.errors import CheckpointCorruptError, StorageAccessError
from sphinxx.storage.hashing import ETagDigest
from sphinxx.storage.stage import _etag_matches, cache_folder, stage
from tests.storage.fault_proxy import Rule

ROOT = Path(__file__).resolve().parents[2]


def _upload(client, bucket: str, files: dict[str, bytes], prefix: str = "model") -> None:
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


def _object_gets(proxy, key_part: str = "/model/") -> dict[str, int]:
    """GETs of objects (not listings) that reached the store, per object path."""
    counts: dict[str, int] = {}
    for method, path, _ in proxy.log:
        bare = path.split("?", 1)[0]
        if method == "GET" and key_part in bare and "?" not in path.split(bare, 1)[1][:1]:
            counts[bare] = counts.get(bare, 0) + 1
    return counts


@pytest.fixture
def model_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"hidden_size": 8}',
        "model-00001-of-00002.safetensors": os.urandom(3_000_000),
        "model-00002-of-00002.safetensors": os.urandom(1_000_000),
        "tokenizer.json": b'{"version": "1.0"}',
    }


def test_stages_a_folder_once_and_reuses_it(s3_server, s3_bucket, fault_proxy, model_files, tmp_path) -> None:
    _upload(s3_server.client(), s3_bucket, model_files)
    options = StorageOptions(endpoint_url=fault_proxy.endpoint_url)
    uri = f"s3://{s3_bucket}/model"
    log = io.StringIO()
    first = stage(uri, root=str(tmp_path / "cache"), options=options, log=log, what="model.llm_weights")
    assert first.local_path == cache_folder(str(tmp_path / "cache"), uri)
    for name, data in model_files.items():
        assert (Path(first.local_path) / name).read_bytes() == data
    assert first.files == 4 and first.bytes_downloaded == first.bytes_total == sum(
        map(len, model_files.values())
    )
    assert "[stage] model.llm_weights: fetching" in log.getvalue()
    assert set(_object_gets(fault_proxy)) == {f"/{s3_bucket}/model/{n}" for n in model_files}

    fault_proxy.log.clear()
    again = stage(uri, root=str(tmp_path / "cache"), options=options, log=io.StringIO())
    assert again.local_path == first.local_path and again.bytes_downloaded == 0
    assert _object_gets(fault_proxy) == {}  # a listing only: nothing fetched


def test_select_fetches_only_the_chosen_files(
    s3_server, s3_bucket, fault_proxy, model_files, tmp_path
) -> None:
    _upload(s3_server.client(), s3_bucket, model_files)
    report = stage(
        f"s3://{s3_bucket}/model",
        root=str(tmp_path),
        options=StorageOptions(endpoint_url=fault_proxy.endpoint_url),
        select=lambda names: [n for n in names if n.startswith("tokenizer")],
        log=io.StringIO(),
    )
    assert sorted(p.name for p in Path(report.local_path).iterdir() if p.is_file()) == ["tokenizer.json"]
    assert list(_object_gets(fault_proxy)) == [f"/{s3_bucket}/model/tokenizer.json"]


def test_a_single_object_uri_stages_that_file(s3_server, s3_bucket, tmp_path) -> None:
    data = os.urandom(200_000)
    s3_server.client().put_object(Bucket=s3_bucket, Key="towers/open_clip_pytorch_model.bin", Body=data)
    report = stage(
        f"s3://{s3_bucket}/towers/open_clip_pytorch_model.bin", root=str(tmp_path), log=io.StringIO()
    )
    assert report.local_path.endswith("open_clip_pytorch_model.bin")
    assert Path(report.local_path).read_bytes() == data


def test_missing_uri_and_local_paths(s3_bucket, tmp_path) -> None:
    with pytest.raises(StorageAccessError, match=rf"model.llm_weights: nothing at s3://{s3_bucket}/nope"):
        stage(f"s3://{s3_bucket}/nope", root=str(tmp_path), what="model.llm_weights", log=io.StringIO())
    local = tmp_path / "weights"
    local.mkdir()
    assert stage(str(local), root=str(tmp_path / "c")).local_path == str(local)  # not copied
    assert stage(f"file://{local}", root=str(tmp_path / "c")).local_path == str(local)
    with pytest.raises(StorageAccessError, match="does not exist"):
        stage(str(tmp_path / "absent"), root=str(tmp_path / "c"))


def test_a_changed_or_corrupted_cached_file_is_fetched_again(
    s3_server, s3_bucket, model_files, tmp_path
) -> None:
    _upload(s3_server.client(), s3_bucket, model_files)
    uri, root = f"s3://{s3_bucket}/model", str(tmp_path / "cache")
    report = stage(uri, root=root, log=io.StringIO())
    shard = Path(report.local_path) / "model-00002-of-00002.safetensors"

    original = model_files[shard.name]
    shard.write_bytes(bytes([original[0] ^ 1]) + original[1:])  # flipped byte: the mtime changes
    again = stage(uri, root=root, log=io.StringIO())
    assert again.bytes_downloaded == len(model_files[shard.name])
    assert shard.read_bytes() == model_files[shard.name]

    st = shard.stat()  # same size and mtime: only a full check can tell
    shard.write_bytes(bytes([original[0] ^ 2]) + original[1:])  # another flip, always a change
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stage(uri, root=root, log=io.StringIO()).bytes_downloaded == 0
    full = stage(uri, root=root, verify="full", log=io.StringIO())
    assert full.bytes_downloaded == len(model_files[shard.name])
    assert shard.read_bytes() == model_files[shard.name]

    shard.write_bytes(model_files[shard.name][:1000])  # truncated
    assert stage(uri, root=root, log=io.StringIO()).bytes_downloaded == len(model_files[shard.name])


def test_etag_of_single_and_multipart_objects(s3_server, s3_bucket, tmp_path) -> None:
    """Our ETag check against the ETags moto computes for a plain and a multipart upload."""
    client = s3_server.client()
    data = os.urandom(12 * 2**20 + 123)
    client.put_object(Bucket=s3_bucket, Key="plain", Body=data[:1000])
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="multi")
    part, parts = 5 * 2**20, []
    for i, start in enumerate(range(0, len(data), part), start=1):
        etag = client.upload_part(Bucket=s3_bucket, Key="multi", UploadId=upload["UploadId"], PartNumber=i,
                                  Body=data[start : start + part])["ETag"]  # fmt: skip
        parts.append({"PartNumber": i, "ETag": etag})
    client.complete_multipart_upload(
        Bucket=s3_bucket, Key="multi", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    plain_etag = client.head_object(Bucket=s3_bucket, Key="plain")["ETag"].strip('"')
    multi_etag = client.head_object(Bucket=s3_bucket, Key="multi")["ETag"].strip('"')
    (tmp_path / "plain").write_bytes(data[:1000])
    (tmp_path / "multi").write_bytes(data)
    assert _etag_matches(str(tmp_path / "plain"), plain_etag, None)
    assert not _etag_matches(str(tmp_path / "multi"), plain_etag, None)
    assert _etag_matches(str(tmp_path / "multi"), multi_etag, part)
    (tmp_path / "multi").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a changed last byte, always
    assert not _etag_matches(str(tmp_path / "multi"), multi_etag, part)
    # The streaming form (what a staging download computes), fed in chunks that straddle parts.
    single, multi = ETagDigest(), ETagDigest(part)
    single.update(data[:1000])
    for start in range(0, len(data), 3 * 2**20 + 7):
        multi.update(data[start : start + 3 * 2**20 + 7])
    assert (single.hexdigest(), multi.hexdigest()) == (plain_etag, multi_etag)

    report = stage(f"s3://{s3_bucket}/multi", root=str(tmp_path / "cache"), log=io.StringIO())
    assert Path(report.local_path).read_bytes() == data
    record = (Path(report.local_path).parent / ".staged" / "multi.json").read_text()
    assert '"checked": "etag"' in record  # the part size came from HeadObject PartNumber=1


def test_a_download_is_checked_against_its_etag_while_it_streams(
    s3_server, s3_bucket, tmp_path, monkeypatch
) -> None:
    """No second read of a staged file: the ETag is computed from the bytes as they land (single
    and multipart objects), and a mismatch fails the staging and removes the file."""
    import sphinxx.storage.stage as stage_mod

    client, data = s3_server.client(), os.urandom(20 * 2**20 + 5)
    client.put_object(Bucket=s3_bucket, Key="w/small.json", Body=data[:5000])
    client.upload_file(
        str(_file(tmp_path / "big.bin", data)), s3_bucket, "w/big.bin"
    )  # multipart (8 MiB parts)
    assert "-" in client.head_object(Bucket=s3_bucket, Key="w/big.bin")["ETag"]

    def no_reread(*args, **kwargs):
        raise AssertionError("the staged file was read again to check its ETag")

    monkeypatch.setattr(stage_mod, "_etag_matches", no_reread)
    report = stage(f"s3://{s3_bucket}/w", root=str(tmp_path / "cache"), log=io.StringIO())
    assert (Path(report.local_path) / "big.bin").read_bytes() == data
    records = Path(report.local_path) / ".staged"
    assert all('"checked": "etag"' in (records / f"{n}.json").read_text() for n in ("small.json", "big.bin"))

    monkeypatch.setattr(ETagDigest, "hexdigest", lambda self: "0" * 32)  # what a corrupted stream gives
    with pytest.raises(
        CheckpointCorruptError, match=r"w/small\.json downloaded with a checksum that does not match"
    ):
        stage(f"s3://{s3_bucket}/w/small.json", root=str(tmp_path / "cache2"), log=io.StringIO())
    assert not list((tmp_path / "cache2").rglob("small.json"))


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


STAGER = textwrap.dedent(
    """
    import json, sys
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.stage import stage
    report = stage(sys.argv[1], root=sys.argv[2], options=StorageOptions(endpoint_url=sys.argv[3]))
    print(json.dumps({"downloaded": report.bytes_downloaded, "path": report.local_path}), flush=True)
    """
)


def _stager(uri: str, root: str, endpoint: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", STAGER, uri, root, endpoint],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_workers_on_a_node_download_each_file_once(
    s3_server, s3_bucket, fault_proxy, model_files, tmp_path
) -> None:
    import json

    _upload(s3_server.client(), s3_bucket, model_files)
    # Slow the big shard down so that both workers are staging at the same time.
    fault_proxy.add(Rule("delay", method="GET", path=r"00001-of-00002", stall_s=1.5, times=5))
    env = {**os.environ, **s3_server.env}
    uri, root = f"s3://{s3_bucket}/model", str(tmp_path / "node-cache")
    procs = [_stager(uri, root, fault_proxy.endpoint_url, env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert results[0]["path"] == results[1]["path"]
    assert sum(r["downloaded"] for r in results) == sum(map(len, model_files.values()))
    gets = _object_gets(fault_proxy)
    assert gets == {f"/{s3_bucket}/model/{n}": 1 for n in model_files}, gets
    for name, data in model_files.items():
        assert (Path(results[0]["path"]) / name).read_bytes() == data


def test_a_killed_download_leaves_no_file_under_its_name(
    s3_server, s3_bucket, fault_proxy, model_files, tmp_path
) -> None:
    _upload(s3_server.client(), s3_bucket, model_files)
    fault_proxy.add(Rule("delay", method="GET", path=r"00001-of-00002", stall_s=60, times=1))
    env = {**os.environ, **s3_server.env}
    uri, root = f"s3://{s3_bucket}/model", str(tmp_path / "node-cache")
    proc = _stager(uri, root, fault_proxy.endpoint_url, env)
    folder = Path(cache_folder(root, uri))
    deadline = time.monotonic() + 60
    while not [m for m, path, _ in list(fault_proxy.log) if m == "GET" and "00001-of-00002" in path]:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    time.sleep(0.5)  # the fetch of the big shard is in flight (held by the proxy), the small ones done
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (folder / "model-00001-of-00002.safetensors").exists()
    fault_proxy.clear()
    report = stage(
        uri, root=root, options=StorageOptions(endpoint_url=fault_proxy.endpoint_url), log=io.StringIO()
    )
    assert (folder / "model-00001-of-00002.safetensors").read_bytes() == model_files[
        "model-00001-of-00002.safetensors"
    ]
    assert not [e for e in _names(folder) if ".part-" in e]
    assert report.bytes_downloaded >= len(model_files["model-00001-of-00002.safetensors"])


def _names(folder: Path) -> list[str]:
    return os.listdir(folder) if folder.exists() else []


def test_cache_folder_names_are_stable_and_distinct() -> None:
    a = cache_folder("/c", "s3://b/models/Mixtral-8x7B")
    assert a == cache_folder("/c", "s3://b/models/Mixtral-8x7B/")
    assert a.startswith("/c/Mixtral-8x7B-") and a != cache_folder("/c", "s3://other/models/Mixtral-8x7B")
    assert len(hashlib.sha256(b"").hexdigest()[:16]) == len(a.rsplit("-", 1)[1])


@pytest.mark.slow  # its own moto server
def test_the_staging_benchmark_runs_and_reports_its_ratio() -> None:
    import json

    out = subprocess.run([sys.executable, str(ROOT / "bench" / "stage.py"),
                          "--size-mib", "16", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    setup, summary = rows[0], rows[-1]
    assert setup["skipped"] == ["pytorch_model.bin", "tokenizer.json"]  # one weight format, no tokenizer
    assert summary["op"] == "summary" and summary["ratio_stage_over_raw_parallel"] > 0
    assert summary["stage_warm_s"] < summary["stage_cold_s"]
