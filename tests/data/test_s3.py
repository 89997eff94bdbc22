"""The synthetic set written to and read from the moto S3 server equals the local one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sphinxx.jobs.data.synth import write_synth
from sphinxx.storage.objectfs import open_fs
from tests.data.conftest import SYNTH_SIZE, run_config
from tests.data.test_synth import files, unlocated
from tests.jobs._tiny import run_data


@pytest.mark.slow  # a moto server process and ~100 PUTs
def test_synth_on_s3_reads_like_local(synth_root: Path, s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPHINXX_STAGE_DIR", str(tmp_path / "cache"))
    root = f"s3://{s3_bucket}/synth"
    write_synth(root, SYNTH_SIZE, seed=0, records_per_shard=4)

    # Byte-identical objects (data.yaml and the task files name their own location).
    fs = open_fs(root)
    remote = {rel: fs.read_bytes(f"{root}/{rel}") for rel in fs.list_files(root)}
    assert unlocated(remote, root) == unlocated(files(synth_root), synth_root.as_uri())

    # Same batches, same accounting. The S3 run loads its tokenizer from the bucket too.
    local_batches = list(run_data(run_config(synth_root), num_steps=3))
    s3_batches = list(run_data(run_config(root), num_steps=3))
    assert len(local_batches) == len(s3_batches) == 3 * 2
    for a, b in zip(local_batches, s3_batches, strict=True):
        assert (a.step, a.micro, a.samples, a.bad) == (b.step, b.micro, b.samples, b.bad)
        for name, value in a.batch.__dict__.items():
            assert value.equal(getattr(b.batch, name)), name
