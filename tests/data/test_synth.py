"""The synthetic set: deterministic, every domain, learnable structure, skip-token aspect ratios."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sphinxx.jobs.data.synth import SOURCES, write_synth
from sphinxx.jobs.data.synth_tasks import COLORS
from sphinxx.model.anyres import skip_mask
from tests.data.conftest import SYNTH_SIZE

SPHINXX = str(Path(sys.executable).parent / "sphinxx")


def records(root: Path, source: str) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted((root / source / "shards").glob("*.jsonl"))
        for line in shard.open()
    ]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def unlocated(written: dict[str, bytes], root: str) -> dict[str, bytes]:
    """`written` without data.yaml, and the task files' image URIs with `root` replaced: both name
    the set's own location."""
    out = {name: data for name, data in written.items() if name != "data.yaml"}
    for name in [n for n in out if n.startswith("bench/") and n.endswith(".jsonl")]:
        out[name] = out[name].decode().replace(root, "ROOT").encode()
    return out


def test_same_seed_same_bytes_other_seed_other_data(synth_root: Path, tmp_path: Path) -> None:
    write_synth(str(tmp_path / "again"), SYNTH_SIZE, seed=0, records_per_shard=4)
    a = unlocated(files(synth_root), synth_root.as_uri())
    b = unlocated(files(tmp_path / "again"), (tmp_path / "again").as_uri())
    assert any(name.startswith("bench/images/") for name in a)
    assert a == b
    write_synth(str(tmp_path / "other"), SYNTH_SIZE, seed=1, records_per_shard=4)
    assert records(synth_root, "synth-math") != records(tmp_path / "other", "synth-math")


def test_every_domain_is_present_with_images_where_expected(synth_root: Path) -> None:
    domains = set()
    for name, domain, _share, _gen in SOURCES:
        manifest = json.loads((synth_root / name / "manifest.json").read_text())
        assert manifest["num_records"] == len(records(synth_root, name)) >= 1
        domains.add(manifest["domain"])
        has_images = [bool(r.get("images")) for r in records(synth_root, name)]
        assert all(has_images) if domain != "language" else not any(has_images)
    assert domains == {"language", "vision", "vision-language", "ocr", "set-of-mark"}


def test_aspect_ratios_vary_enough_that_cells_are_skipped(synth_root: Path) -> None:
    sizes = [
        tuple(s) for name, *_ in SOURCES for r in records(synth_root, name) for s in r.get("image_sizes", [])
    ]
    ratios = [w / h for w, h in sizes]
    assert max(ratios) >= 2 and min(ratios) <= 0.5
    assert any(any(skip_mask(w, h, 2)) for w, h in sizes)  # skip tokens on the default 2x2 grid
    assert any(not any(skip_mask(w, h, 2)) for w, h in sizes)


def test_boxes_point_at_the_named_shapes(synth_root: Path) -> None:
    checked = 0
    for r in records(synth_root, "synth-scenes"):
        image = Image.open(synth_root / "synth-scenes" / r["images"][0]).convert("RGB")
        long_side = max(image.size)
        msgs = r["conversations"]
        for q, a in zip(msgs[::2], msgs[1::2], strict=True):
            m = re.search(r"bounding box of the (\w+) (\w+)", q["value"])
            if not m:
                continue
            x1, y1, x2, y2 = json.loads(a["value"])
            center = (int((x1 + x2) / 2 * long_side), int((y1 + y2) / 2 * long_side))
            assert image.getpixel(center) == COLORS[m.group(1)], (r["id"], q["value"])
            checked += 1
    assert checked > 0


def test_text_tasks_are_consistent(synth_root: Path) -> None:
    for r in records(synth_root, "synth-math"):
        for msg in r["conversations"][1::2]:
            m = re.fullmatch(r"(-?\d+) ([+\-x]) (\d+) = (-?\d+)\.", msg["value"])
            if m:
                a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
                assert {"+": a + b, "-": a - b, "x": a * b}[op] == c
    flags: dict[str, str] = {}
    for r in records(synth_root, "synth-dialog"):
        for msg in r["conversations"][1::2]:
            m = re.fullmatch(r"The flag of (\w+) is (\w+)\.", msg["value"])
            if m:
                assert flags.setdefault(m[1], m[2]) == m[2]  # one fact per town, in every record


def test_tokenizer_is_small_complete_and_lossless(synth_root: Path, synth_tokenizer) -> None:
    assert len(synth_tokenizer) <= 4096  # fits the debug flavor's vocabulary
    for token in ("<s>", "</s>", "<pad>"):
        assert token in synth_tokenizer.get_vocab()
    assert synth_tokenizer.bos_token == "<s>" and synth_tokenizer.eos_token == "</s>"
    for name, *_ in SOURCES:
        for r in records(synth_root, name)[:3]:
            for msg in r["conversations"]:
                ids = synth_tokenizer(msg["value"], add_special_tokens=False)["input_ids"]
                assert synth_tokenizer.decode(ids) == msg["value"]


def test_cli_synth_then_inspect_reports_nested_counts(tmp_path: Path, capsys) -> None:
    from sphinxx.cli import main

    out = tmp_path / "cli"
    # The installed entry point once; inspect runs in-process (a subprocess pays torch's import each time).
    result = subprocess.run(
        [SPHINXX, "data", "synth", str(out), "--size", "14", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "synth-ocr" in result.stdout and "tokenizer:" in result.stdout
    assert f"benchmark: {(out / 'bench' / 'synth_box.jsonl').as_uri()} (synth_box)" in result.stdout
    reports = {}
    for f in ("0.25", "0.5", "1.0"):
        assert main(["data", "inspect", str(out / "data.yaml"), "--fraction", f, "--json"]) == 0
        reports[f] = json.loads(capsys.readouterr().out)
    totals = [reports[f]["totals"] for f in ("0.25", "0.5", "1.0")]
    for key in ("kept", "images", "image_tokens", "text_tokens"):
        assert totals[0][key] <= totals[1][key] <= totals[2][key], key
    # At fraction 1 the counts are those of the files themselves.
    assert totals[2]["kept"] == totals[2]["records"] == 14
    all_images = sum(bool(r.get("images")) for name, *_ in SOURCES for r in records(out, name))
    assert totals[2]["images"] == all_images
    assert totals[2]["text_tokens"] > 0
    assert np.isclose(sum(s["share"] for s in reports["1.0"]["sources"].values()), 1.0)
    assert main(["data", "inspect", str(out / "synth-ocr")]) == 0
    assert "synth-ocr" in capsys.readouterr().out
