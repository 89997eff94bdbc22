"""HashingFile: the sha256 computed while a download writes a file is that of the bytes in it, or None."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinxx.storage.hashing import HashingFile, sha256_file


def _write(sink: HashingFile, offset: int, data: bytes) -> None:
    sink.seek(offset)  # what s3transfer's IOWriteTask does
    sink.write(data)


def test_in_order_writes_hash_like_hashlib(tmp_path):
    data = os.urandom(3 * 256 * 1024 + 17)
    path = str(tmp_path / "f")
    with HashingFile(path) as sink:
        for offset in range(0, len(data), 256 * 1024):
            _write(sink, offset, data[offset : offset + 256 * 1024])
        digest = sink.hexdigest()
    assert digest == hashlib.sha256(data).hexdigest() == sha256_file(path)


def test_an_empty_file_hashes_to_the_empty_digest(tmp_path):
    with HashingFile(str(tmp_path / "f")) as sink:
        _write(sink, 0, b"")  # s3transfer's write for a 0-byte object
        assert sink.hexdigest() == hashlib.sha256(b"").hexdigest()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
    order=st.randoms(use_true_random=False),
)
def test_ranged_parts_in_any_order_hash_like_the_file(tmp_path_factory, sizes, order):
    # Parts of a ranged download land out of order, each in chunks; the digest is still the file's.
    data = os.urandom(sum(sizes))
    chunks, offset = [], 0
    for size in sizes:
        chunks.append((offset, data[offset : offset + size]))
        offset += size
    order.shuffle(chunks)
    path = str(tmp_path_factory.mktemp("h") / "f")
    with HashingFile(path) as sink:
        for offset, chunk in chunks:
            _write(sink, offset, chunk)
        digest = sink.hexdigest()
    assert digest == hashlib.sha256(data).hexdigest() == sha256_file(path)


def test_overlapping_writes_ahead_of_the_prefix_hash_what_the_file_holds(tmp_path):
    # A part retried before the prefix reached it: the later bytes win on disk and in the digest.
    path = str(tmp_path / "f")
    with HashingFile(path) as sink:
        _write(sink, 100, b"x" * 100)
        _write(sink, 150, b"y" * 100)
        _write(sink, 120, b"z" * 10)
        _write(sink, 0, b"a" * 125)  # in order, and over the head of a written interval
        digest = sink.hexdigest()
    assert digest == sha256_file(path)


def test_a_write_below_the_hashed_prefix_gives_up_the_stream_digest(tmp_path):
    # s3transfer re-fetches a cut part from its start: the hashed bytes are written again,
    # maybe with other bytes, so only a fresh read of the file can say what it holds.
    path = str(tmp_path / "f")
    with HashingFile(path) as sink:
        _write(sink, 0, b"a" * 100)
        _write(sink, 50, b"b" * 100)
        assert sink.hexdigest() is None
    assert os.path.getsize(path) == 150


def test_a_hole_gives_no_digest(tmp_path):
    with HashingFile(str(tmp_path / "f")) as sink:
        _write(sink, 0, b"a" * 10)
        _write(sink, 20, b"b" * 10)  # [10, 20) never written: reads as zeros
        assert sink.hexdigest() is None


def test_a_late_write_after_close_fails_cleanly(tmp_path):
    sink = HashingFile(str(tmp_path / "f"))
    sink.close()
    with pytest.raises(ValueError, match="closed file"):
        _write(sink, 0, b"late")
