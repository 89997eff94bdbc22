"""`sphinxx model export` (jobs/export.py, model/export.py): a committed checkpoint -> a HF folder.

The checkpoints are real: a tiny `debug` / `debug-moe` SphinxX built from a run config, saved by
the training Checkpointer into a CheckpointStore (file:// and the moto S3 server). The reference
is independent of our export code: transformers' own `AutoModelForCausalLM.from_pretrained` on the
exported folder must give the logits of our `model.llm` on the same ids (fp32, <= 1e-5).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.jobs._tiny import VOCAB, tiny_run_config

TOL = 1e-5
IDS = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))
WORDS = ["<unk>", "<s>", "</s>", "<pad>", *"the a cat dog sat on mat red blue 1 2 3".split()]


def write_tokenizer(folder: Path) -> None:
    """A small word-level tokenizer (fewer ids than the tiny model's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(folder))


def committed_run(
    storage: str,
    flavor: str,
    tokenizer: str,
    steps: tuple[int, ...] = (3,),
    seq_len: int = 64,
    **model_fields,
):
    """Save `steps` of a tiny model with the training Checkpointer; returns (store, model).
    `model_fields` replace fields of the run's `model` section (tower URIs)."""
    from sphinxx.jobs.checkpoint import Checkpointer, RunState
    from sphinxx.jobs.checkpoint.fragments import ensure_optimizer_state
    from sphinxx.jobs.context import Worker
    from sphinxx.schema.run import to_yaml
    from sphinxx.storage import CheckpointStore
    from tests.jobs._tiny import run_model

    cfg = tiny_run_config(flavor, 0, 1, storage)
    cfg = replace(cfg, data=replace(cfg.data, tokenizer=tokenizer, seq_len=seq_len))
    cfg = replace(cfg, model=replace(cfg.model, **model_fields))
    torch.manual_seed(0)
    model, _ = run_model(cfg, Worker())
    store = CheckpointStore(storage, cfg.run_id)
    store.write_run_config(to_yaml(cfg))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ensure_optimizer_state(optimizer)  # optim/ files of real size: the export must skip them
    from sphinxx.jobs.build import loaded_tower_prefixes

    # as the job saves: towers loaded from URIs stay out of the checkpoint
    ckpt = Checkpointer(store, model, optimizer, 0, 1, skip_prefixes=loaded_tower_prefixes(cfg.model))
    for step in steps:
        with torch.no_grad():  # weights large enough for a meaningful logits comparison
            for p in model.llm.parameters():
                p.normal_(0.0, 0.1 if p.dim() > 1 else 1.0)
        ckpt.save(RunState(step, {}, {}), {}, {"loss": 1.0})
    return store, model.eval()


def hf_logits(out: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return hf.eval()(IDS).logits


def check_multimodal(out: Path, model, step: int) -> dict:
    from safetensors.torch import load_file

    body = json.loads((out / "sphinxx_multimodal.json").read_text())
    tensors = load_file(str(out / "sphinxx_multimodal.safetensors"))
    state = model.state_dict()
    for name in ("projector.proj.weight", "projector.norm.bias", "start_img", "end_img", "skip_token"):
        assert torch.equal(tensors[name], state[name]), name
    assert body["source"]["step"] == step and body["source"]["checkpoint"].endswith(f"step-{step:09d}")
    assert (
        body["processor"]["use_skip_token"] is True and body["processor"]["canvas"] == model.args.image.canvas
    )
    assert set(tensors) == {"projector.proj.weight", "projector.proj.bias", "projector.norm.weight",
                            "projector.norm.bias", "start_img", "end_img", "skip_token"}  # fmt: skip
    assert body["projector"]["out_dim"] == model.args.llm.dim
    assert body["shapes"]["projector.proj.weight"] == list(state["projector.proj.weight"].shape)
    return body


def test_dense_export_loads_in_transformers_with_our_logits(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from sphinxx.jobs.export import export_checkpoint

    write_tokenizer(tmp_path / "tok")
    store, model = committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"))
    out, staging = tmp_path / "out", tmp_path / "staging"
    summary = export_checkpoint(store.root, str(out), work_dir=str(staging))

    diff = (hf_logits(out) - model.llm(IDS)).abs().max().item()
    print(f"export debug: transformers vs ours max abs logit diff {diff:.3e}")
    assert diff <= TOL
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == VOCAB
    assert (out / "model.safetensors").exists() and not (out / "model.safetensors.index.json").exists()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("the cat sat")["input_ids"] == [WORDS.index(w) for w in ("the", "cat", "sat")]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == WORDS.index("</s>")
    body = check_multimodal(out, model, 3)
    # No tower URIs: the towers come from the checkpoint, each in its own folder.
    assert body["tower_uris"] == {"convnext": None, "dinov2": None}
    assert all((out / "vision" / t / "model.safetensors").exists() for t in ("convnext", "dinov2"))
    # Only model/ was downloaded: the staging folder is exactly what the store fetched.
    fetched = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert fetched and all(f.startswith("model/") or f == "manifest.json" for f in fetched), fetched
    manifest = store.get(3).manifest
    assert any(f.path.startswith("optim/") for f in manifest.files)
    assert summary["downloaded_bytes"] == sum(f.size for f in manifest.files if f.path.startswith("model/"))
    assert summary["downloaded_bytes"] < manifest.total_bytes


def test_moe_export_sharded_loads_as_mixtral(tmp_path: Path) -> None:
    from sphinxx.jobs.export import export_checkpoint

    write_tokenizer(tmp_path / "tok")
    store, model = committed_run((tmp_path / "runs").as_uri(), "debug-moe", str(tmp_path / "tok"))
    out = tmp_path / "out"
    step_uri = store.layout.step_dir(3)
    summary = export_checkpoint(step_uri, str(out), max_shard_bytes=64 * 1024, with_tokenizer=False)

    diff = (hf_logits(out) - model.llm(IDS)).abs().max().item()
    print(f"export debug-moe: transformers vs ours max abs logit diff {diff:.3e}")
    assert diff <= TOL
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 4
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(summary["files"]) > 1
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in index["weight_map"]
    assert not (out / "tokenizer.json").exists()
    check_multimodal(out, model, 3)


def test_export_from_s3_through_the_cli(tmp_path: Path, s3_bucket: str, monkeypatch, capsys) -> None:
    from sphinxx.cli import main
    from sphinxx.storage import open_fs

    monkeypatch.setenv("SPHINXX_STAGE_DIR", str(tmp_path / "stage"))
    write_tokenizer(tmp_path / "tok")
    tokenizer = f"s3://{s3_bucket}/tokenizers/words"
    fs = open_fs(tokenizer)
    for name in os.listdir(tmp_path / "tok"):
        fs.write_bytes(f"{tokenizer}/{name}", (tmp_path / "tok" / name).read_bytes())
    store, model = committed_run(f"s3://{s3_bucket}/sweeps", "debug", tokenizer, steps=(2, 4))
    out = tmp_path / "out"
    assert main(["model", "export", store.root, str(out), "--step", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["architecture"] == "LlamaForCausalLM"
    assert summary["downloaded_bytes"] < store.get(2).manifest.total_bytes
    assert summary["tokenizer"] is True and (out / "tokenizer.json").exists()
    # step 2's weights, not the latest's (the model holds step 4's now)
    assert (hf_logits(out) - model.llm(IDS)).abs().max().item() > 1e-2
    assert main(["model", "export", store.root, str(tmp_path / "latest")]) == 0
    assert (hf_logits(tmp_path / "latest") - model.llm(IDS)).abs().max().item() <= TOL


def test_missing_and_uncommitted_checkpoints_are_one_line_errors(tmp_path: Path, capsys) -> None:
    from sphinxx.cli import main

    write_tokenizer(tmp_path / "tok")
    store, _ = committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "x.bin").write_bytes(b"0" * 10)
    store.prepare(5)
    with store.writer(5, 0, 1) as writer:  # files, no manifest: a save that never committed
        writer.upload_dir(str(tmp_path / "partial"))

    assert main(["model", "export", store.root, str(tmp_path / "a"), "--step", "5"]) == 1
    err = capsys.readouterr().err
    assert "step-000000005" in err and "not committed" in err and "committed steps: 3" in err
    assert main(["model", "export", store.root, str(tmp_path / "b"), "--step", "9"]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint at step 9" in err and "step-000000009" in err
    empty = (tmp_path / "runs").as_uri() + "/never-ran"
    assert main(["model", "export", empty, str(tmp_path / "c")]) == 1
    assert "never-ran/checkpoints: no committed checkpoint" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    assert main(["model", "export", store.root, str(tmp_path / "taken")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    for name in ("a", "b", "c"):
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.partial").exists()


@pytest.mark.slow
def test_moe_checkpoint_saved_with_ep2_exports_every_expert(tmp_path: Path) -> None:
    from sphinxx.jobs.export import export_checkpoint
    from tests.jobs._dist import run_distributed

    storage = (tmp_path / "runs").as_uri()
    write_tokenizer(tmp_path / "tok")
    states = run_distributed(_save_ep2, 2, storage)
    from sphinxx.model.llm import Transformer

    args = states[0]["args"]
    reference = Transformer(args).eval()
    merged = {}
    for name, value in states[0]["llm"].items():
        expert = ".moe.experts." in name
        merged[name] = torch.cat([states[0]["llm"][name], states[1]["llm"][name]]) if expert else value
    reference.load_state_dict(merged, strict=True)
    out = tmp_path / "out"
    export_checkpoint(f"{storage}/ckpt-test", str(out), with_tokenizer=False)
    diff = (hf_logits(out) - reference(IDS)).abs().max().item()
    print(f"export debug-moe saved with EP 2: max abs logit diff {diff:.3e}")
    assert diff <= TOL


def _save_ep2(rank: int, world: int, storage: str):
    from dataclasses import replace

    from sphinxx.jobs.checkpoint import Checkpointer, RunState
    from sphinxx.jobs.context import Worker
    from sphinxx.schema.run import to_yaml
    from sphinxx.storage import CheckpointStore
    from tests.jobs._tiny import run_engine, run_model

    cfg = tiny_run_config("debug-moe", 2, 2, storage)  # EP needs ZeRO-1/2
    worker = Worker(rank=rank, world_size=world)
    model, _ = run_model(cfg, worker)
    with torch.no_grad():
        torch.manual_seed(100)  # replicated tensors equal on every rank
        for p in model.llm.parameters():
            p.normal_(0.0, 0.1 if p.dim() > 1 else 1.0)
        torch.manual_seed(200 + rank)  # each EP rank's experts differ
        for name, p in model.llm.named_parameters():
            if ".moe.experts." in name:
                p.normal_(0.0, 0.1)
    engine, optimizer = run_engine(model, cfg, worker, 2)
    store = CheckpointStore(storage, cfg.run_id)
    if rank == 0:
        store.write_run_config(to_yaml(cfg))
    Checkpointer(store, model, optimizer, rank, world).save(RunState(3, {}, {}), {}, {"loss": 1.0})
    return {"llm": {k: v.detach().clone() for k, v in model.llm.state_dict().items()},
            "args": replace(model.llm.args, ep_size=1, moe_kernel="loop")}  # fmt: skip
