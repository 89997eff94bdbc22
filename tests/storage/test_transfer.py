"""Parallel multipart transfer: part sizes, bounded concurrency, progress, download checks (sha256
while streaming), deadlines."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sphinxx.storage import CheckpointCorruptError, CheckpointStore, StorageOptions, StorageTimeoutError
from sphinxx.storage.hashing import FileDigest, PartTreeDigest, sha256_file
from sphinxx.storage.transfer import MAX_PARTS, chunk_size_for
from tests.storage.conftest import read_tree
from tests.storage.fault_proxy import Rule

MiB = 1 << 20


@given(st.integers(0, 50 * (1 << 40)))
def test_chunk_size_respects_s3_limits(size):
    chunk = chunk_size_for(size)
    assert chunk >= 8 * MiB and chunk % MiB == 0
    assert -(-size // chunk) <= MAX_PARTS  # ceil(size / chunk) parts at most 10,000
    assert chunk < max(8 * MiB, size / MAX_PARTS) + MiB  # and no bigger than needed


def test_multipart_parts_and_bounded_concurrency(s3_prefix, fault_proxy, make_ckpt, tmp_path):
    local = make_ckpt({"big-0.bin": 20 * MiB, "big-1.bin": 17 * MiB, "small.json": 100})
    options = StorageOptions(endpoint_url=fault_proxy.endpoint_url, file_concurrency=2, part_concurrency=2)
    store = CheckpointStore(s3_prefix, "run", options=options)
    events = []
    with store.writer(1, progress=events.append) as w:
        w.upload_dir(local)
    parts = [p for m, p, _ in fault_proxy.log if m == "PUT" and "partNumber=" in p]
    assert len([p for p in parts if "big-0.bin" in p]) == 3  # 20 MiB in 8 MiB parts
    assert len([p for p in parts if "big-1.bin" in p]) == 3
    assert not any("small.json?" in p for _, p, _ in fault_proxy.log)  # one plain PUT
    assert fault_proxy.max_inflight <= 2 * 2 + 1  # files x parts (+1 for a concurrent small request)
    total = 37 * MiB + 100
    assert [e.bytes_done for e in events] == sorted(e.bytes_done for e in events)  # monotonic
    assert events[-1].bytes_done == total == events[-1].bytes_total and events[-1].files_done == 3
    assert {e.file for e in events if e.file} == {
        store.layout.file(1, n) for n in ("big-0.bin", "big-1.bin", "small.json")
    }
    store.commit(1)
    fault_proxy.clear()
    out = str(tmp_path / "restore")
    down = []
    store.download(1, out, progress=down.append)
    ranged = [p for m, p, _ in fault_proxy.log if m == "GET" and re.search(r"big-0\.bin$", p)]
    assert len(ranged) >= 3  # ranged GETs in parallel parts
    assert down[-1].bytes_done == total
    restored = read_tree(out)
    restored.pop("manifest.json")
    assert restored == read_tree(local)


def test_download_leaves_no_partial_file_on_mismatch(prefix, make_ckpt, tmp_path):
    store = CheckpointStore(prefix, "run")
    store.save(1, make_ckpt({"a.bin": 5000}))
    fs = store.fs()
    uri = store.layout.file(1, "a.bin")
    fs.write_bytes(uri, os.urandom(5000))  # same size, other bytes
    out = tmp_path / "restore"
    with pytest.raises(Exception, match="a.bin: sha256"):
        store.download(1, str(out))
    assert not (out / "a.bin").exists() and not list(out.glob("a.bin.part-*"))
    relaxed = CheckpointStore(prefix, "run", options=StorageOptions(verify_checksums=False))
    relaxed.download(1, str(out))  # sizes only: the operator's choice
    assert (out / "a.bin").stat().st_size == 5000


def test_a_hung_upload_fails_the_save_within_its_deadline(s3_prefix, fault_proxy, make_ckpt):
    import time

    options = StorageOptions(endpoint_url=fault_proxy.endpoint_url, read_timeout_s=30, deadline_s=1.0)
    store = CheckpointStore(s3_prefix, "run", options=options)
    store.latest()  # warm the client outside the timed part
    fault_proxy.add(Rule("stall", method="PUT", path="hang.bin", stall_s=4))
    start = time.monotonic()
    with pytest.raises(StorageTimeoutError, match="within 1s") as err:
        with store.writer(1) as w:
            w.upload_dir(make_ckpt({"hang.bin": 10}))
    assert time.monotonic() - start < 3.5
    assert err.value.uri.endswith("hang.bin")
    assert store.latest() is None


HUNG_SAVE = """
import os, sys, time
sys.path.append(sys.argv[3])  # for tests.storage.fault_proxy (appended: our operator/ must not shadow stdlib)
from sphinxx.storage import CheckpointStore, StorageOptions, StorageTimeoutError
from tests.storage.fault_proxy import FaultProxy, Rule

proxy = FaultProxy(os.environ["AWS_ENDPOINT_URL"])
options = StorageOptions(endpoint_url=proxy.endpoint_url, read_timeout_s=30, deadline_s=1.0)
store = CheckpointStore(sys.argv[1], "run", options=options)
store.latest()
proxy.add(Rule("stall", method="PUT", path="hang.bin", stall_s=4))
try:
    with store.writer(1) as w:
        w.upload_dir(sys.argv[2])
except StorageTimeoutError:
    print("save failed within its deadline", flush=True)
proxy.close()  # the store goes away too: the abandoned upload can only fail now
print(f"exiting at {time.monotonic():.3f}", flush=True)
"""


@pytest.mark.slow
def test_a_process_whose_save_hung_still_exits(s3_env, s3_prefix, make_ckpt, tmp_path):
    # A save that missed its deadline leaves its upload behind; the process must still end
    # (a training worker that failed a save is restarted by exiting), not wait on it forever.
    import subprocess
    import sys
    import time

    script = tmp_path / "hung_save.py"
    script.write_text(HUNG_SAVE)
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, str(script), s3_prefix, make_ckpt({"hang.bin": 10}), root],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the process did not exit within 60 s after a failed save:\n{out}")
    ended = time.monotonic()
    assert proc.returncode == 0 and "save failed within its deadline" in out, out
    exiting = float(re.search(r"exiting at ([0-9.]+)", out).group(1))
    assert ended - exiting < 15, f"exit took {ended - exiting:.1f} s"


def _spy_rehash(monkeypatch) -> list[str]:
    """Record every file a download hashes by reading it back (the fallback to streamed hashing)."""
    reread: list[str] = []
    real = FileDigest.of_file

    def spy(self: FileDigest, path: str) -> str:
        reread.append(path)
        return real(self, path)

    monkeypatch.setattr(FileDigest, "of_file", spy)
    return reread


def test_s3_restore_hashes_while_downloading(s3_prefix, fault_proxy, make_ckpt, tmp_path, monkeypatch):
    # 20 MiB: three ranged 8 MiB parts landing out of order; 300 KiB: one GET, in order.
    local = make_ckpt({"big.bin": 20 * MiB, "small.bin": 300 * 1024})
    store = CheckpointStore(s3_prefix, "run", options=StorageOptions(endpoint_url=fault_proxy.endpoint_url))
    store.save(1, local)
    reread = _spy_rehash(monkeypatch)
    fault_proxy.clear()
    out = str(tmp_path / "restore")
    store.download(1, out)
    assert reread == []  # both digests came from the stream, none from reading the files again
    restored = read_tree(out)
    restored.pop("manifest.json")
    assert restored == read_tree(local)
    # One LIST gave the ETags: no HeadObject per file (s3fs may HEAD the manifest it reads).
    assert not [p for m, p, _ in fault_proxy.log if m == "HEAD" and p.endswith(".bin")]
    assert len([p for m, p, _ in fault_proxy.log if m == "GET" and "list-type=2" in p]) == 1

    # The streamed digest is the sha256 of the file written, single-part and multi-part alike,
    # and so is the part tree (what a manifest records for a file uploaded in parts).
    fs = store.fs()
    for name, size in (("big.bin", 20 * MiB), ("small.bin", 300 * 1024)):
        path = str(tmp_path / f"direct-{name}")
        uri = store.layout.file(1, name)
        streamed = fs.get_file(uri, path, chunk_size=8 * MiB, size=size, digest=hashlib.sha256)
        assert streamed is not None and streamed == sha256_file(path) == sha256_file(f"{local}/{name}")
        tree = fs.get_file(uri, path, chunk_size=8 * MiB, size=size, digest=lambda: PartTreeDigest(8 * MiB))
        assert tree is not None and tree == FileDigest("", 8 * MiB).of_file(f"{local}/{name}")


@pytest.mark.parametrize("size", [5000, 17 * MiB], ids=["single-part", "multi-part"])
def test_a_corrupted_s3_object_is_caught_on_restore(s3_prefix, make_ckpt, tmp_path, size):
    # Same size, one byte flipped: only the sha256 can tell, and the streamed one must.
    store = CheckpointStore(s3_prefix, "run")
    store.save(1, make_ckpt({"w.bin": size}))
    fs = store.fs()
    uri = store.layout.file(1, "w.bin")
    data = bytearray(fs.read_bytes(uri))
    data[size * 2 // 3] ^= 0xFF  # in the last part of the multi-part one
    fs.write_bytes(uri, bytes(data))
    out = tmp_path / "restore"
    with pytest.raises(CheckpointCorruptError, match="w.bin: sha256") as err:
        store.download(1, str(out))
    assert err.value.uri == uri
    assert not list(out.rglob("w.bin*"))  # neither the file nor its temporary name


@pytest.mark.parametrize("corrupt", [False, True], ids=["intact", "corrupted"])
def test_a_cut_stream_is_refetched_and_the_file_hashed_again(
    s3_prefix, fault_proxy, make_ckpt, tmp_path, monkeypatch, corrupt
):
    # s3transfer re-fetches a GET whose body was cut: bytes already hashed are written again,
    # so the stream digest is given up and the finished file is read back instead. 3 MiB: the
    # half that arrives before the cut holds at least one whole io chunk (s3bulk.IO_CHUNK).
    local = make_ckpt({"small.bin": 3 * MiB})
    store = CheckpointStore(s3_prefix, "run", options=StorageOptions(endpoint_url=fault_proxy.endpoint_url))
    store.save(1, local)
    if corrupt:
        store.fs().write_bytes(store.layout.file(1, "small.bin"), os.urandom(3 * MiB))
    reread = _spy_rehash(monkeypatch)
    fault_proxy.add(Rule("cut_body", method="GET", path=r"small\.bin$"))
    out = tmp_path / "restore"
    if corrupt:
        with pytest.raises(CheckpointCorruptError, match="small.bin: sha256"):
            store.download(1, str(out))
        assert not list(out.rglob("small.bin*"))
    else:
        store.download(1, str(out))
        assert (out / "small.bin").read_bytes() == (Path(local) / "small.bin").read_bytes()
    assert [p for m, p, o in fault_proxy.log if o == "cut_body"]  # the fault did happen
    assert len(reread) == 1 and ".part-" in reread[0]


def test_a_stale_listed_etag_is_retried_without_it(s3_prefix, fault_proxy, make_ckpt, tmp_path):
    # The object changed since its ETag was listed: the ranged GETs' If-Match fails, and the
    # file is fetched again with a HeadObject for the current ETag (the sha256 then judges it).
    from sphinxx.storage.transfer import TransferItem, download

    local = make_ckpt({"big.bin": 17 * MiB})
    store = CheckpointStore(s3_prefix, "run", options=StorageOptions(endpoint_url=fault_proxy.endpoint_url))
    store.save(1, local)
    entry = store.get(1).manifest.files[0]
    target = str(tmp_path / "big.bin")
    fault_proxy.clear()
    item = TransferItem(
        target,
        store.layout.file(1, "big.bin"),
        entry.size,
        entry.sha256,
        etag='"0123-3"',
        part_size=entry.part_size,
    )
    download(store.fs(), [item])
    assert Path(target).read_bytes() == (Path(local) / "big.bin").read_bytes()
    assert len([p for m, p, _ in fault_proxy.log if m == "HEAD"]) == 1  # the second attempt only


def test_bytes_from_memory_upload_exactly_as_a_file_of_them(prefix, make_ckpt, tmp_path):
    """`upload_bytes` (a checkpoint streamed from host memory) records the same size, digest and
    part size as `upload_files` of a file holding those bytes, on every scheme (on S3: the same
    8 MiB parts, the signed part tree), and the download checks out against it."""
    local = make_ckpt({"big.bin": 17 * MiB + 5, "small.json": 300})
    store = CheckpointStore(prefix, "run", options=StorageOptions())
    with store.writer(1) as w:
        from_files = w.upload_dir(local)
    data = {rel: Path(local, rel).read_bytes() for rel in ("big.bin", "small.json")}
    with store.writer(2) as w:
        from_memory = w.upload_bytes([(blob, rel) for rel, blob in data.items()])
    store.commit(1, 1, writers=None)
    store.commit(2, 1, writers=None)
    key = lambda e: (e.path, e.size, e.sha256, e.part_size)  # noqa: E731
    assert sorted(map(key, from_memory)) == sorted(map(key, from_files))
    if prefix.startswith("s3://"):
        assert next(e for e in from_memory if e.path == "big.bin").part_size == 8 * MiB
    store.download(2, str(tmp_path / "back"))  # sizes and sha256 checked against the manifest
    back = read_tree(str(tmp_path / "back"))
    back.pop("manifest.json")
    assert back == data
