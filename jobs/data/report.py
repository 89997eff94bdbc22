"""Counts of a data-fraction subset: records, images, image tokens and text tokens per source.

Why a scan: the manifest knows record counts, but images and tokens per record are only known
by reading the records (and, for images without `image_sizes`, their headers). A sweep compares
points by how much data they saw, so `sphinxx data inspect` reports the exact numbers of the
subset a fraction selects; the loader also counts what a run actually consumed (`DataStats`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

from PIL import Image

from sphinxx.jobs.data.format import (
    BadRecordError,
    Record,
    line_offsets,
    parse_record,
    read_manifest,
    resolve_image,
)
from sphinxx.jobs.data.fraction import kept_indices
from sphinxx.jobs.data.mixture import Mixture, MixtureSource
from sphinxx.jobs.data.template import ConversationEncoder, load_tokenizer
from sphinxx.model.anyres import CELL_SIZE, AnyResConfig, num_visual_tokens
from sphinxx.schema.documents import load_yaml
from sphinxx.storage import uri as uri_mod
from sphinxx.storage.objectfs import open_fs

UNBOUNDED = 1 << 30  # a seq_len that never truncates, to count every text token

# (name, root URI, domain, weight) of one source named on the command line or in a YAML file.
SourceSpec = tuple[str, str, str, float]


def count_subset(
    mixture: Mixture, tokenizer: Any = None, canvas: int = 448, use_skip_token: bool = True
) -> dict[str, Any]:
    """Exact counts over the kept records of every source of `mixture`."""
    encoder = ConversationEncoder(tokenizer, UNBOUNDED) if tokenizer is not None else None
    image_cfg = AnyResConfig(grid=canvas // CELL_SIZE, use_skip_token=use_skip_token)
    sources: dict[str, dict[str, Any]] = {}
    for s, (src, share) in enumerate(zip(mixture.sources, mixture.probs, strict=True)):
        row: dict[str, Any] = {
            "domain": src.domain,
            "weight": src.weight,
            "records": src.manifest.num_records,
            "kept": src.num_kept,
        }
        row.update(share=round(float(share), 6), images=0, image_tokens=0, bad=0)
        row["text_tokens"] = 0 if encoder else None
        for record in _kept_records(src, set(mixture.kept(s).tolist())):
            if isinstance(record, BadRecordError):
                row["bad"] += 1
                continue
            if record.images:
                width, height = (
                    record.image_sizes[0] if record.image_sizes else _image_size(src.uri, record.images[0])
                )
                row["images"] += 1
                row["image_tokens"] += num_visual_tokens(width, height, image_cfg)
            if encoder:
                row["text_tokens"] += len(encoder.encode(record.turns).tokens)
        sources[src.name] = row
    keys = ("records", "kept", "images", "image_tokens", "bad")
    totals: dict[str, Any] = {k: sum(r[k] for r in sources.values()) for k in keys}
    totals["text_tokens"] = sum(r["text_tokens"] for r in sources.values()) if encoder else None
    return {"fraction": mixture.fraction, "seed": mixture.seed, "sources": sources, "totals": totals}


def _kept_records(src: MixtureSource, kept: set[int]) -> Iterator[Record | BadRecordError]:
    """Parsed kept records of one source, shard by shard (one whole-shard read each)."""
    fs = open_fs(src.uri)
    start = 0
    for shard in src.manifest.shards:
        wanted = [i for i in range(start, start + shard.num_records) if i in kept]
        if wanted:
            shard_uri = uri_mod.join(src.uri, shard.path)
            data = fs.read_bytes(shard_uri)
            offsets = line_offsets(data)
            for i in wanted:
                line = i - start
                location = f"{shard_uri}:{line + 1}"
                try:
                    yield parse_record(data[int(offsets[line]) : int(offsets[line + 1])], location)
                except BadRecordError as err:
                    yield err
        start += shard.num_records


def _image_size(root: str, ref: str) -> tuple[int, int]:
    uri = resolve_image(root, ref)
    with Image.open(io.BytesIO(open_fs(uri).read_bytes(uri))) as image:  # reads the header only
        return image.size


def _sources_from_yaml(uri: str) -> tuple[list[SourceSpec], dict[str, Any]]:
    text = open_fs(uri_mod.normalize(uri)).read_bytes(uri_mod.normalize(uri))
    loaded = load_yaml(text, uri)  # the one safe reader: bounded, no duplicate keys
    data = loaded.get("data") if isinstance(loaded, dict) else None
    if not isinstance(data, dict) or not data.get("sources"):
        raise ValueError(f"{uri} has no data.sources list")
    sources: list[SourceSpec] = []
    for spec in data["sources"]:
        root = uri_mod.normalize(spec["uri"])
        sources.append((spec["name"], root, spec.get("domain", "language"), float(spec.get("weight", 1.0))))
    return sources, data


def inspect_sources(
    uris: Sequence[str],
    fraction: float | None = None,
    seed: int | None = None,
    tokenizer: str | None = None,
    canvas: int | None = None,
) -> dict[str, Any]:
    """The report of `sphinxx data inspect`: source roots or a YAML with a `data:` section."""
    specs: list[SourceSpec] = []
    defaults: dict[str, Any] = {}
    for uri in uris:
        if uri.endswith((".yaml", ".yml")):
            found, defaults = _sources_from_yaml(uri)
            specs.extend(found)
        else:
            root = uri_mod.normalize(uri)
            manifest = read_manifest(root)
            specs.append((manifest.name, root, manifest.domain, 1.0))
    fraction = fraction if fraction is not None else float(defaults.get("fraction", 1.0))
    seed = seed if seed is not None else int(defaults.get("seed", 0))
    sources = []
    for name, root, domain, weight in specs:
        manifest = read_manifest(root)
        kept = len(kept_indices(seed, name, manifest.num_records, fraction))
        sources.append(MixtureSource(name, root, domain, weight, manifest, kept))
    tok = None
    if tokenizer or defaults.get("tokenizer"):
        tok = load_tokenizer(tokenizer or defaults["tokenizer"])
    return count_subset(Mixture(sources, fraction, seed), tok, canvas or int(defaults.get("canvas", 448)))
