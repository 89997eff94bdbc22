"""Weights by URI (jobs/build.py): tiny checkpoints in the real formats on the moto S3 server.

Each is loaded through the run config's URI fields (staged on the "node", raw Hugging Face folders
converted while loading) and compared with transformers on the same files and with loading the
same files from a local path (`sphinxx model convert` + load for the LLM).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from sphinxx.jobs.build import stage_bytes
from sphinxx.jobs.context import Worker
from sphinxx.jobs.stores import storage_options
from sphinxx.model.convert import checkpoint_files, convert_hf, load_converted, load_llm_weights
from sphinxx.model.llm import Transformer
from sphinxx.schema.decoder import ModelArgs
from sphinxx.schema.run import load_config
from sphinxx.storage.errors import StorageAccessError
from sphinxx.storage.stage import stage
from tests.jobs._tiny import run_model
from tests.model.test_adapters import llama_hf_to_internlm2_names
from tests.model.test_llm import MOE_ARGS, hf_llama, hf_mixtral
from tests.model.test_vision import DEBUG, _hub_layout, timm_convnext_state

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=200, max_seq_len=64)
FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "rope_theta", "norm_eps")
MOE_FIELDS = (*FIELDS, "num_experts", "top_k", "moe_ffn_dim")
TOKENS = torch.randint(0, ARGS.vocab_size, (2, 24), generator=torch.Generator().manual_seed(6))


@pytest.fixture(autouse=True)
def node_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SPHINXX_STAGE_DIR", str(tmp_path / "node-cache"))
    return tmp_path / "node-cache"


def _upload(client, bucket: str, folder: Path, prefix: str) -> str:
    for path in folder.rglob("*"):
        if path.is_file():
            client.put_object(
                Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder)}", Body=path.read_bytes()
            )
    return f"s3://{bucket}/{prefix}"


def _config(flavor: str, args: ModelArgs, fields, tmp_path, ep_size: int = 1, **model):
    overrides = {k: v for k, v in asdict(args).items() if k in fields}
    return load_config(
        preset=flavor,
        data={"model": {"overrides": overrides, **model}},
        overrides=[f"storage.uri=file://{tmp_path}/store", "run_id=weights", "data.seq_len=64",
                   f"parallel.ep_size={ep_size}", f"parallel.min_workers={ep_size}",
                   f"parallel.max_workers={ep_size}"],
    )  # fmt: skip


def _logits(llm) -> torch.Tensor:
    with torch.no_grad():
        return llm.eval()(TOKENS)


def test_raw_hf_llama_folder_on_s3_equals_transformers_and_the_converted_load(
    s3_server, s3_bucket, tmp_path, node_cache
) -> None:
    hf_model = hf_llama(ARGS)
    src = tmp_path / "hf"
    hf_model.save_pretrained(str(src), max_shard_size="100KB")
    assert (src / "model.safetensors.index.json").exists()
    (src / "pytorch_model.bin").write_bytes(b"the same weights again, as Hub repos ship them")
    (src / "original").mkdir()
    (src / "original" / "consolidated.00.pth").write_bytes(b"Meta's format")
    uri = _upload(s3_server.client(), s3_bucket, src, "models/tiny-llama")

    staged: list = []
    cfg = _config("debug", ARGS, FIELDS, tmp_path, llm_weights=uri)
    planned = stage_bytes(
        cfg.model, cfg.data.tokenizer, storage_options(cfg.storage)
    )  # what `sphinxx sweep plan --cost` reports, from a listing
    model, _ = run_model(cfg, Worker(), staged)
    got = _logits(model.llm)
    diff = (got - hf_model(TOKENS).logits).abs().max().item()
    print(f"raw HF llama from s3 vs transformers: max abs diff {diff:.3e}")
    assert diff <= 1e-5

    convert_hf(str(src), "debug", str(tmp_path / "ours"), overrides={k: getattr(ARGS, k) for k in FIELDS})
    with torch.device("meta"):
        reference = type(model.llm)(model.llm.args)
    reference.to_empty(device="cpu")
    load_converted(str(tmp_path / "ours"), reference)
    assert torch.equal(got, _logits(reference))

    (report,) = staged
    names = sorted(os.listdir(report.local_path))
    assert "pytorch_model.bin" not in names and "original" not in names  # one format, top level only
    assert report.bytes_downloaded == report.bytes_total == planned > 0
    again: list = []
    run_model(_config("debug", ARGS, FIELDS, tmp_path, llm_weights=uri), Worker(), again)
    assert again[0].bytes_downloaded == 0 and again[0].local_path == report.local_path


def test_converted_folder_on_s3_loads_like_the_local_folder(s3_server, s3_bucket, tmp_path) -> None:
    hf_llama(ARGS).save_pretrained(str(tmp_path / "hf"))
    convert_hf(
        str(tmp_path / "hf"), "debug", str(tmp_path / "ours"), overrides={k: getattr(ARGS, k) for k in FIELDS}
    )
    uri = _upload(s3_server.client(), s3_bucket, tmp_path / "ours", "converted/tiny")
    from_s3, _ = run_model(_config("debug", ARGS, FIELDS, tmp_path, llm_weights=uri), Worker())
    local, _ = run_model(
        _config("debug", ARGS, FIELDS, tmp_path, llm_weights=str(tmp_path / "ours")), Worker()
    )
    assert torch.equal(_logits(from_s3.llm), _logits(local.llm))


def test_internlm2_bin_folder_on_s3(s3_server, s3_bucket, tmp_path) -> None:
    hf_model = hf_llama(ARGS)
    src = tmp_path / "internlm2"
    src.mkdir()
    torch.save(llama_hf_to_internlm2_names(hf_model.state_dict(), ARGS), src / "pytorch_model.bin")
    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 96, "vocab_size": 200}))
    uri = _upload(s3_server.client(), s3_bucket, src, "models/internlm2")
    # The path build_model takes for `model.llm_weights`, on the decoder alone: the internlm2-7b
    # flavor's full-size vision towers (2B parameters) would take a minute to build on 2 cores.
    report = stage(uri, select=checkpoint_files, what="model.llm_weights")
    with torch.device("meta"):
        llm = Transformer(replace(ARGS, rope_theta=10000.0))
    llm.to_empty(device="cpu")
    assert load_llm_weights(report.local_path, llm, family="internlm2") == "hf"
    assert (_logits(llm) - hf_model(TOKENS).logits).abs().max().item() <= 1e-5


def test_mixtral_expert_parallel_rank_loads_its_experts_from_s3(s3_server, s3_bucket, tmp_path) -> None:
    hf_model = hf_mixtral(MOE_ARGS)
    hf_model.save_pretrained(str(tmp_path / "hf"), max_shard_size="200KB")
    uri = _upload(s3_server.client(), s3_bucket, tmp_path / "hf", "models/tiny-mixtral")
    full, _ = run_model(_config("debug-moe", MOE_ARGS, MOE_FIELDS, tmp_path, llm_weights=uri), Worker())
    diff = (_logits(full.llm) - hf_model(TOKENS).logits).abs().max().item()
    assert diff <= 1e-5
    cfg = _config("debug-moe", MOE_ARGS, MOE_FIELDS, tmp_path, ep_size=2, llm_weights=uri)
    rank1, ep_size = run_model(cfg, Worker(rank=1, world_size=2))
    assert ep_size == 2
    whole = dict(full.llm.named_parameters())
    for name, param in rank1.llm.named_parameters():
        if ".moe.experts." in name:
            assert param.shape[0] * 2 == whole[name].shape[0]
            assert torch.equal(param, whole[name][param.shape[0] :]), name  # experts 4..7
        else:
            assert torch.equal(param, whole[name]), name


def test_vision_towers_from_s3_equal_the_local_files(s3_server, s3_bucket, tmp_path) -> None:
    from safetensors.torch import save_file

    from sphinxx.model.vision import Dinov2Tower, VisionEncoders, load_vision_weights

    client = s3_server.client()
    towers = tmp_path / "towers"
    towers.mkdir()
    torch.save(timm_convnext_state(DEBUG.convnext), towers / "open_clip_pytorch_model.bin")
    client.put_object(Bucket=s3_bucket, Key="towers/convnext/open_clip_pytorch_model.bin",
                      Body=(towers / "open_clip_pytorch_model.bin").read_bytes())  # fmt: skip
    dino = tmp_path / "dinov2"
    torch.manual_seed(3)
    source = Dinov2Tower(DEBUG.dinov2)
    source.model.config.save_pretrained(dino)
    save_file(_hub_layout(source.model.state_dict()), str(dino / "model.safetensors"))
    dino_uri = _upload(client, s3_bucket, dino, "towers/dinov2")

    cfg = _config("debug", ARGS, FIELDS, tmp_path,
                  convnext_weights=f"s3://{s3_bucket}/towers/convnext/open_clip_pytorch_model.bin",
                  dinov2_weights=dino_uri)  # fmt: skip
    model, _ = run_model(cfg, Worker())
    reference = VisionEncoders(DEBUG)
    load_vision_weights(reference, str(towers / "open_clip_pytorch_model.bin"), str(dino))
    ours = model.vision.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value), key


def test_missing_weights_name_the_field_and_the_uri(s3_bucket, tmp_path) -> None:
    uri = f"s3://{s3_bucket}/models/not-uploaded"
    with pytest.raises(StorageAccessError, match=f"model.llm_weights: nothing at {uri}"):
        run_model(_config("debug", ARGS, FIELDS, tmp_path, llm_weights=uri), Worker())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither a converted checkpoint"):
        run_model(_config("debug", ARGS, FIELDS, tmp_path, llm_weights=str(empty)), Worker())
