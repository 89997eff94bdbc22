"""Micro-batches from keys: fetch, parse, decode, any-res process, tokenise, collate.

Why this shape: everything expensive happens here, inside DataLoader worker processes, so the
training thread only receives finished tensors. Worker w of n takes the sampler's micro-batches
j with j mod n == w; torch's DataLoader returns iterable-dataset items round-robin over workers,
so the stream order is the sampler's order whatever n is.

Read-ahead: each worker fetches the raw bytes (record lines by ranged reads, then images) of its
next `read_ahead` micro-batches on a background thread while it decodes the current one. On S3
the reads of one micro-batch go out concurrently (s3fs `cat_ranges` / `cat`).

Bad records never raise here: a record that cannot be parsed, whose image is missing or cannot
be decoded, or whose shard or index is missing or inconsistent is dropped from its micro-batch
and reported in `LoadedBatch.bad` with its location; the loader decides when there are too many.
A store that fails us after its retries (access denied, 5xx) is not bad data: that raises, and
the run fails (and is resumed) like any other infrastructure failure.
"""

from __future__ import annotations

import io
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from sphinxx.jobs.data.collate import LoadedBatch, collate_rows
from sphinxx.jobs.data.format import (
    MISSING_IMAGE,
    UNDECODABLE_IMAGE,
    UNREADABLE_SHARD,
    BadRecordError,
    Record,
    ShardInfo,
    decode_index,
    line_offsets,
    parse_record,
    resolve_image,
)
from sphinxx.jobs.data.mixture import Mixture
from sphinxx.jobs.data.packing import PADDED
from sphinxx.jobs.data.sampler import ElasticSampler, MicroBatchKey
from sphinxx.jobs.data.template import ConversationEncoder, SampleTooLongError
from sphinxx.model.anyres import AnyResConfig, process_image
from sphinxx.model.sphinx import SphinxSample
from sphinxx.storage import uri as uri_mod
from sphinxx.storage.errors import StorageError
from sphinxx.storage.objectfs import ObjectFS, open_fs

SKIP_TOO_LONG = "too_long"  # the image alone does not fit data.seq_len
SKIP_NO_TARGET = "no_target"  # truncation removed every answer token


@dataclass(frozen=True)
class SourceRef:
    """What a worker needs to read one source (small and picklable)."""

    name: str
    uri: str
    shards: tuple[ShardInfo, ...]

    @classmethod
    def from_mixture(cls, mixture: Mixture) -> list[SourceRef]:
        return [cls(s.name, s.uri, s.manifest.shards) for s in mixture.sources]


@dataclass
class RawSample:
    position: int
    source: int
    record: int
    location: str
    item: Record | BadRecordError | None = None
    image_uri: str | None = None
    image_bytes: bytes | None = None


class RecordReader:
    """Random access to records by (source, index) through the storage layer."""

    def __init__(self, sources: Sequence[SourceRef]):
        self.sources = list(sources)
        self._starts = [np.cumsum([0] + [s.num_records for s in src.shards]) for src in self.sources]
        self._offsets: dict[tuple[int, int], np.ndarray | BadRecordError] = {}
        self._fs: dict[str, ObjectFS] = {}
        self._pid = -1

    def fs(self, uri: str) -> ObjectFS:
        """The filesystem of `uri`'s scheme (sources and images may live in different stores)."""
        if self._pid != os.getpid():
            # One filesystem per process: s3fs clients do not survive a fork into DataLoader workers.
            self._fs, self._pid = {}, os.getpid()
        scheme = uri.split("://", 1)[0]
        if scheme not in self._fs:
            self._fs[scheme] = open_fs(uri)
        return self._fs[scheme]

    def _shard_of(self, source: int, record: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self._starts[source], record, side="right")) - 1
        return shard, record - int(self._starts[source][shard])

    def _shard_uri(self, source: int, shard: int) -> str:
        return uri_mod.join(self.sources[source].uri, self.sources[source].shards[shard].path)

    def _shard_offsets(self, source: int, shard: int) -> np.ndarray | BadRecordError:
        key = (source, shard)
        if key not in self._offsets:
            src, info = self.sources[source], self.sources[source].shards[shard]
            shard_uri = self._shard_uri(source, shard)
            fs = self.fs(shard_uri)
            try:
                if info.index:
                    offsets = decode_index(fs.read_bytes(uri_mod.join(src.uri, info.index)))
                else:  # no index written: read the shard once and find its lines
                    offsets = line_offsets(fs.read_bytes(shard_uri)).astype(np.int64)
                if len(offsets) != info.num_records + 1:
                    raise ValueError(f"index has {len(offsets) - 1} lines, manifest says {info.num_records}")
                # Kept for every shard this worker reads from: 4 bytes a record where they fit (60 MB
                # per worker once every shard of 15M records was read; docs/training.md, "Data pipeline").
                self._offsets[key] = offsets.astype(np.uint32) if offsets[-1] < 2**32 else offsets
            except (FileNotFoundError, ValueError) as err:  # a store that fails us raises (not bad data)
                self._offsets[key] = BadRecordError(
                    UNREADABLE_SHARD, shard_uri, f"{type(err).__name__}: {err}"
                )
        return self._offsets[key]

    def location(self, source: int, record: int) -> str:
        shard, line = self._shard_of(source, record)
        return f"{self._shard_uri(source, shard)}:{line + 1}"

    def fetch(self, key: MicroBatchKey) -> list[RawSample]:
        """Record lines (concurrent ranged reads per store), then their images (concurrent GETs)."""
        raws: list[RawSample] = []
        ranges: dict[str, list[tuple[RawSample, str, int, int]]] = {}  # scheme -> reads
        for pos, s, r in zip(key.positions, key.sources, key.records, strict=True):
            raw = RawSample(pos, s, r, self.location(s, r))
            raws.append(raw)
            shard, line = self._shard_of(s, r)
            offsets = self._shard_offsets(s, shard)
            if isinstance(offsets, BadRecordError):
                raw.item = BadRecordError(UNREADABLE_SHARD, raw.location, offsets.detail)
                continue
            shard_uri = self._shard_uri(s, shard)
            read = (raw, shard_uri, int(offsets[line]), int(offsets[line + 1]))
            ranges.setdefault(shard_uri.split("://", 1)[0], []).append(read)
        for reads in ranges.values():
            fs = self.fs(reads[0][1])
            # fsspec's ranged reads (concurrent on S3); ObjectFS has no batched ranged read.
            paths = [fs.path(uri) for _, uri, _, _ in reads]
            data = fs.fs.cat_ranges(paths, [r[2] for r in reads], [r[3] for r in reads], on_error="return")
            for (raw, *_), line in zip(reads, data, strict=True):
                raw.item = _parse(line, raw.location)
        for raw in raws:
            if isinstance(raw.item, Record) and raw.item.images:
                raw.image_uri = resolve_image(self.sources[raw.source].uri, raw.item.images[0])
        self._fetch_images([(r.image_uri, r) for r in raws if r.image_uri])
        return raws

    def _fetch_images(self, wanted: list[tuple[str, RawSample]]) -> None:
        """Fetch each (image URI, sample)'s bytes into the sample (or mark it bad: missing image)."""
        by_scheme: dict[str, list[tuple[str, RawSample]]] = {}
        for uri, r in wanted:
            by_scheme.setdefault(uri.split("://", 1)[0], []).append((uri, r))
        for group in by_scheme.values():
            fs = self.fs(group[0][0])
            try:
                found = fs.read_many([uri for uri, _ in group])
            except StorageError:  # one failing read fails the batched call: retry one by one
                found = {}
                for uri, _ in group:
                    try:
                        found[uri] = fs.read_bytes(uri)
                    except FileNotFoundError:
                        pass
            for uri, r in group:
                r.image_bytes = found.get(uri)
                if r.image_bytes is None:
                    r.item = BadRecordError(MISSING_IMAGE, uri, f"referenced by {r.location}")


def _parse(data: bytes | BaseException, location: str) -> Record | BadRecordError:
    if isinstance(data, FileNotFoundError):  # the shard vanished after its index was read
        return BadRecordError(UNREADABLE_SHARD, location, f"{type(data).__name__}: {data}")
    if isinstance(data, BaseException):  # the store failed us: not a data problem, let the run fail
        raise data
    try:
        return parse_record(data, location)
    except BadRecordError as err:
        return err


@dataclass
class SamplePipeline:
    """CPU stages after fetching: decode, any-res process, tokenise, collate (and pack: `packing`)."""

    encoder: ConversationEncoder
    image: AnyResConfig
    packing: str = PADDED

    def build(self, key: MicroBatchKey, raws: list[RawSample], fetch_s: float) -> LoadedBatch:
        out = LoadedBatch.empty(key.step, key.micro, attempted=len(raws))
        out.timings["fetch"] = fetch_s
        rows: list[SphinxSample] = []
        for raw in raws:
            sample = self._sample(raw, out)
            if sample is not None:
                rows.append(sample)
                out.samples.append((raw.source, raw.record))
                out.positions.append(raw.position)
        t0 = time.perf_counter()
        collate_rows(out, rows, self.encoder, self.image, self.packing)
        out.timings["collate"] = time.perf_counter() - t0
        return out

    def _sample(self, raw: RawSample, out: LoadedBatch) -> SphinxSample | None:
        if isinstance(raw.item, BadRecordError):
            out.bad.append((raw.item.kind, raw.item.location, raw.item.detail))
            return None
        record, processed = raw.item, None
        assert record is not None  # fetch() gave every sample its item: a Record or a BadRecordError
        if raw.image_bytes is not None:
            assert raw.image_uri is not None  # the bytes were fetched from it
            t0 = time.perf_counter()
            try:
                image = _decode(raw.image_bytes)
            except Exception as err:  # noqa: BLE001 - Pillow raises many types for corrupt files
                out.bad.append((UNDECODABLE_IMAGE, raw.image_uri, f"{type(err).__name__}: {err}"[:200]))
                return None
            t1 = time.perf_counter()
            processed = process_image(image, self.image)
            t2 = time.perf_counter()
            out.add_time("decode", t1 - t0)
            out.add_time("process", t2 - t1)
        t0 = time.perf_counter()
        try:
            encoded = self.encoder.encode(record.turns, processed.num_tokens if processed else 0)
        except SampleTooLongError:
            out.skipped[SKIP_TOO_LONG] = out.skipped.get(SKIP_TOO_LONG, 0) + 1
            return None
        out.add_time("tokenize", time.perf_counter() - t0)
        if encoded.num_targets == 0:
            out.skipped[SKIP_NO_TARGET] = out.skipped.get(SKIP_NO_TARGET, 0) + 1
            return None
        out.truncated += int(encoded.truncated)
        out.target_bytes += encoded.target_bytes
        return SphinxSample(encoded.tokens, encoded.labels, processed)


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()  # decode now: a truncated or corrupt file fails here, inside the worker
    return image.convert("RGB")


class MicroBatchStream(IterableDataset):
    """The sampler's micro-batches for one rank, built in DataLoader workers with read-ahead."""

    def __init__(
        self, sampler: ElasticSampler, reader: RecordReader, pipeline: SamplePipeline, read_ahead: int = 2
    ):
        super().__init__()
        self.sampler, self.reader, self.pipeline = sampler, reader, pipeline
        self.read_ahead = max(1, read_ahead)

    def _my_slots(self) -> Iterator[tuple[int, int]]:
        info = get_worker_info()
        num, me = (info.num_workers, info.id) if info is not None else (1, 0)
        j, step = 0, self.sampler.start_step
        while self.sampler.stop_step is None or step < self.sampler.stop_step:
            for micro in range(self.sampler.accum_steps):
                if j % num == me:
                    yield step, micro
                j += 1
            step += 1

    def _fetch(self, step: int, micro: int) -> tuple[MicroBatchKey, list[RawSample], float]:
        t0 = time.perf_counter()
        key = self.sampler.key(step, micro)
        raws = self.reader.fetch(key)
        return key, raws, time.perf_counter() - t0

    def __iter__(self) -> Iterator[LoadedBatch]:
        slots = self._my_slots()
        queue: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sphinxx-read-ahead") as pool:
            for _ in range(self.read_ahead):
                slot = next(slots, None)
                if slot is not None:
                    queue.append(pool.submit(self._fetch, *slot))
            while queue:
                key, raws, fetch_s = queue.popleft().result()
                slot = next(slots, None)
                if slot is not None:
                    queue.append(pool.submit(self._fetch, *slot))
                yield self.pipeline.build(key, raws, fetch_s)


def worker_init(_worker_id: int) -> None:
    # One intra-op thread per worker: the workers already use every core between them.
    torch.set_num_threads(1)
