"""Bad records are counted, logged with their location and skipped; too many fail the run."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from sphinxx.jobs.data.format import SourceWriter, record_to_json
from sphinxx.jobs.data.loader import TooManyBadRecordsError
from sphinxx.model.anyres import AnyResConfig, num_visual_tokens
from sphinxx.schema.run import load_config
from tests.jobs._tiny import run_data

TURNS = [("<image>\nWhat is shown?", "A square."), ("And its color?", "Red.")]
SIZES = [(64, 64), (128, 32), (32, 128), (90, 60), (40, 120), (150, 50)]


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def write_corpus(root: Path) -> dict:
    """Source `mixed` with every defect, and source `lost` whose second shard is deleted."""
    w = SourceWriter(str(root / "mixed"), "mixed", "vision", records_per_shard=10)
    expected: dict = {"kinds": {}, "locations": []}
    line = 0

    def add(text: str, images: dict | None = None, kind: str | None = None, where: str | None = None) -> None:
        nonlocal line
        w.add(text, images)
        if kind:
            expected["kinds"][kind] = expected["kinds"].get(kind, 0) + 1
            expected["locations"].append(where or f"mixed/shards/{line // 10:05d}.jsonl:{line % 10 + 1}")
        line += 1

    for i in range(12):
        add(record_to_json([(f"What is {i} + 1?", f"{i + 1}.")]))
    for i, size in enumerate(SIZES):
        add(record_to_json(TURNS, [f"images/ok{i}.png"]), {f"images/ok{i}.png": png(size)})
    add('{"conversations": [{"from": "human", "value": "cut off', kind="malformed_json")
    add("not json at all", kind="malformed_json")
    add('{"images": []}', kind="invalid_record")
    add(record_to_json([("q", "a")])[:-1] + ', "images": ["a.png", "b.png"]}', kind="invalid_record")
    add(record_to_json(TURNS, ["images/gone1.png"]), kind="missing_image", where="mixed/images/gone1.png")
    add(record_to_json(TURNS, ["images/gone2.png"]), kind="missing_image", where="mixed/images/gone2.png")
    add(
        record_to_json(TURNS, ["images/junk.png"]),
        {"images/junk.png": b"not an image"},
        "undecodable_image",
        "mixed/images/junk.png",
    )
    add(
        record_to_json(TURNS, ["images/half.png"]),
        {"images/half.png": png((64, 64))[:60]},
        "undecodable_image",
        "mixed/images/half.png",
    )
    add(
        record_to_json(TURNS, ["images/text.png"]),
        {"images/text.png": b"\x89PNG\r\n\x1a\n" + b"0" * 50},
        "undecodable_image",
        "mixed/images/text.png",
    )
    w.close()

    lost = SourceWriter(str(root / "lost"), "lost", "language", records_per_shard=4)
    for i in range(8):
        lost.add(record_to_json([(f"Say {i}.", f"{i}")]))
    lost.close()
    os.remove(root / "lost" / "shards" / "00001.jsonl")
    expected["kinds"]["unreadable_shard"] = 4
    expected["locations"].append("lost/shards/00001.jsonl")
    expected["records"] = line + 8
    return expected


def corpus_config(root: Path, *overrides: str):
    sources = [
        {"name": "mixed", "uri": str(root / "mixed"), "domain": "vision"},
        {"name": "lost", "uri": str(root / "lost"), "domain": "language"},
    ]
    # 35 records, global batch 5 for 7 steps: exactly one epoch, every record once.
    return load_config(
        preset="debug",
        data={"data": {"sources": sources, "seq_len": 2048}},
        overrides=["train.global_batch=5", "train.micro_batch=5", "train.steps=7", *overrides],
    )


def test_every_kind_of_bad_record_is_counted_logged_and_skipped(tmp_path, synth_tokenizer, caplog) -> None:
    expected = write_corpus(tmp_path)
    cfg = corpus_config(tmp_path, "data.max_bad_record_ratio=0.5")
    stream = run_data(cfg, tokenizer=synth_tokenizer, min_records_for_ratio=10)
    with caplog.at_level(logging.WARNING, logger="sphinxx.jobs.data.loader"):
        batches = list(stream)
    assert stream.stats.records == expected["records"] == 35
    assert stream.stats.bad == expected["kinds"]
    good = 35 - sum(expected["kinds"].values())
    assert stream.stats.samples == good == sum(b.num_samples for b in batches)
    assert stream.stats.images == len(SIZES)
    assert stream.stats.image_tokens == sum(num_visual_tokens(w, h, AnyResConfig()) for w, h in SIZES)
    for location in expected["locations"]:
        assert location in caplog.text, location


def test_past_the_ratio_the_run_fails_with_an_actionable_message(tmp_path, synth_tokenizer) -> None:
    write_corpus(tmp_path)
    cfg = corpus_config(tmp_path, "data.max_bad_record_ratio=0.2")
    stream = run_data(cfg, tokenizer=synth_tokenizer, min_records_for_ratio=10)
    with pytest.raises(TooManyBadRecordsError, match=r"data.max_bad_record_ratio=0.2") as err:
        list(stream)
    assert "unreadable_shard" in str(err.value) or "malformed_json" in str(err.value)


def test_a_few_bad_records_early_do_not_fail_a_healthy_run(tmp_path, synth_tokenizer) -> None:
    write_corpus(tmp_path)
    cfg = corpus_config(tmp_path, "data.max_bad_record_ratio=0.2")
    stream = run_data(cfg, tokenizer=synth_tokenizer, min_records_for_ratio=1000)
    # First step: 5 records, judged against a grace of 1000 x 0.2 = 200 bad ones whatever the draw.
    next(stream.iter_steps())
    assert stream.stats.records == 5


def test_images_longer_than_seq_len_are_skipped_not_cut(tmp_path, synth_tokenizer) -> None:
    write_corpus(tmp_path)
    cfg = corpus_config(tmp_path, "data.max_bad_record_ratio=0.5", "data.seq_len=1024")
    stream = run_data(cfg, tokenizer=synth_tokenizer, min_records_for_ratio=10)
    batches = list(stream)
    too_long = sum(num_visual_tokens(w, h, AnyResConfig()) + 2 > 1024 for w, h in SIZES)
    assert stream.stats.skipped == {"too_long": too_long}
    for mb in batches:
        assert max(mb.batch.sequence_lengths()) <= 1024


def test_a_micro_batch_with_nothing_usable_still_has_one_target_free_row(tmp_path, synth_tokenizer) -> None:
    w = SourceWriter(str(tmp_path / "bad"), "bad", "language")
    for _ in range(5):
        w.add("{broken")
    w.close()
    cfg = load_config(
        preset="debug",
        data={"data": {"sources": [{"name": "bad", "uri": str(tmp_path / "bad")}]}},
        overrides=[
            "train.global_batch=5",
            "train.micro_batch=5",
            "train.steps=1",
            "data.max_bad_record_ratio=1",
        ],
    )
    (mb,) = list(run_data(cfg, tokenizer=synth_tokenizer))
    assert mb.batch.tokens.shape[0] == 1 and mb.num_targets == 0 and mb.num_samples == 0
    assert mb.batch.tokens[0, 0] == synth_tokenizer.bos_token_id


def test_batches_feed_the_model_and_respect_seq_len(synth_root, synth_tokenizer) -> None:
    """The contract with sphinxx.model: the debug SphinxX takes the batches as they come."""
    from sphinxx.model.flavors import build_sphinx
    from tests.data.conftest import run_config

    # canvas 224 (two views per image) keeps the CPU forward quick; the 448 layout is the model's tests' job.
    cfg = run_config(synth_root, "data.seq_len=600", "data.canvas=224")
    model = build_sphinx("debug", vocab_size=len(synth_tokenizer))
    for mb in run_data(cfg, tokenizer=synth_tokenizer, num_steps=1):
        out = model(mb.batch)
        assert out.num_targets == mb.num_targets > 0
        assert max(mb.batch.sequence_lengths()) <= 600
        assert out.loss.isfinite()
