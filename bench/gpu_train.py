"""MFU of a TinyLlama-sized SPHINX-X training step on one GPU (bf16), in under 5 minutes.

Run on the GPU machine from the repo root (no install needed: the repo folders are mapped onto
the `sphinxx` namespace; uses DeepSpeed when importable, else plain torch, and says which):

    python3 bench/gpu_train.py [--micro 4] [--text 700] [--steps 15] [--warmup 3] [--ac]

Smoke test of this script on a CPU machine (debug flavor, fp32, a few seconds):

    .venv/bin/python bench/gpu_train.py --device cpu --flavor debug --micro 1 --text 64 --steps 2 --warmup 1

What runs: the `tinyllama-1.1b` SPHINX-X flavor (TinyLlama-1.1B decoder + ConvNeXt-XXL and
DINOv2-g towers, random weights built on the GPU), bf16 compute with fp32 master weights
(DeepSpeed ZeRO-0 + bf16 optimizer as the job uses on one GPU, AdamW, clip 2.0), one image per
sample on the 448 canvas with all 5 views real (1295 image positions) + `--text` text tokens,
loss on the second half of the text (answers), the job's loss: CE sum / targets + aux.

Prints JSON lines: `env`; `config` (params, positions, FLOPs per step from `model.info`); one
`step` line per timed step; `summary`: median step time, positions/s, samples/s, MFU = model
FLOPs (LLM 6N + 12 L d T, projector, frozen towers' forward) / (step time x 989 TFLOP/s, H100
SXM dense bf16), the LLM-only MFU, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _bootstrap_sphinxx() -> None:
    """Map the repo's folders onto the `sphinxx` namespace when the package is not installed."""
    try:
        import sphinxx.jobs.parallelize  # noqa: F401
        import sphinxx.model.sphinx  # noqa: F401

        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    for name, folder in (("sphinxx", "sphinxx"), ("sphinxx.model", "model"), ("sphinxx.jobs", "jobs")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(root / folder)]
        sys.modules[name] = mod


def emit(kind: str, **row) -> None:
    print(json.dumps({"kind": kind, **row}), flush=True)


def init_process_group(device: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=0, world_size=1)


def make_batch(args, model, device: str):
    """`micro` samples: [BOS] + image (5 real views) + text; targets on the second half of the text."""
    from sphinxx.model.sphinx import SphinxBatch

    cfg = model.args.image
    g = torch.Generator(device="cpu").manual_seed(0)
    vocab = model.args.llm.vocab_size
    tokens = torch.randint(3, vocab, (args.micro, args.text), generator=g)
    labels = tokens.clone()
    labels[:, : args.text // 2] = -100
    views = args.micro * cfg.num_slots
    return SphinxBatch(
        tokens=tokens,
        labels=labels,
        text_lengths=torch.full((args.micro,), args.text),
        image_slots=torch.ones(args.micro, cfg.num_slots, dtype=torch.long),
        dino_pixels=torch.randn(views, 3, cfg.dino_view_size, cfg.dino_view_size, generator=g),
        convnext_pixels=torch.randn(views, 3, cfg.convnext_view_size, cfg.convnext_view_size, generator=g),
    ).to(device)


def step_flops(model, batch) -> dict[str, float]:
    from sphinxx.model.info import flops, parameter_counts
    from sphinxx.model.sphinx import SphinxX

    with torch.device("meta"):
        meta = SphinxX(model.args)
    counts = parameter_counts(meta)
    positions = sum(batch.sequence_lengths())
    image_tokens = sum(batch.image_tokens())
    views = int((batch.image_slots == 1).sum())
    cost = flops(meta, counts, max(batch.sequence_lengths()))
    llm = cost["llm_train_per_token"] * positions
    total = (
        llm + cost["projector_train_per_image_token"] * image_tokens + cost["vision_forward_per_view"] * views
    )
    return {"total": total, "llm": llm, "positions": positions, "views": views, "params": counts}


def build(args, device: str):
    from sphinxx.model.flavors import get_sphinx_args
    from sphinxx.model.llm import apply_activation_checkpointing
    from sphinxx.model.sphinx import SphinxX

    sargs = get_sphinx_args(args.flavor, max_seq_len=args.text + 1400)
    torch.manual_seed(0)
    with torch.device(device):
        model = SphinxX(sargs)
    model.vision.requires_grad_(False)
    if args.ac:
        apply_activation_checkpointing(model.llm)
    bf16 = device.startswith("cuda")
    try:
        import deepspeed  # noqa: F401

        from sphinxx.jobs import parallelize

        groups = parallelize.optimizer_param_groups(model, 0.0)
        optimizer = torch.optim.AdamW(groups, lr=2e-5, betas=(0.9, 0.95), eps=1e-8)
        config = parallelize.deepspeed_config(
            zero_stage=0, micro_batch=args.micro, precision="bf16" if bf16 else "fp32", grad_clip=2.0
        )
        engine = parallelize.initialize(model, optimizer, config)
        return model, engine, "deepspeed"
    except ImportError as err:
        emit("note", message=f"DeepSpeed not importable ({err}); plain torch AdamW + bf16 autocast")
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=2e-5, betas=(0.9, 0.95), eps=1e-8
        )
        return model, _TorchEngine(model, optimizer, bf16), "torch"


class _TorchEngine:
    """The same three calls as a DeepSpeed engine, for machines without DeepSpeed."""

    def __init__(self, model, optimizer, bf16: bool):
        self.model, self.optimizer, self.bf16 = model, optimizer, bf16

    def __call__(self, batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(batch)

    def backward(self, loss):
        loss.backward()

    def step(self):
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 2.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", default="tinyllama-1.1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--micro", type=int, default=4, help="samples per step")
    parser.add_argument(
        "--text", type=int, default=700, help="text tokens per sample (plus 1295 image positions)"
    )
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ac", action="store_true", help="activation checkpointing per decoder block")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="stop timing after this")
    args = parser.parse_args()
    started = time.monotonic()
    _bootstrap_sphinxx()
    device = args.device
    if device.startswith("cuda"):
        torch.cuda.set_device(0)
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    emit("env", torch=torch.__version__, device=name, cuda=torch.version.cuda, python=sys.version.split()[0])
    init_process_group(device)
    model, engine, path = build(args, device)
    batch = make_batch(args, model, device)
    cost = step_flops(model, batch)
    emit(
        "config",
        flavor=args.flavor,
        engine=path,
        micro=args.micro,
        positions=cost["positions"],
        views=cost["views"],
        activation_checkpointing=args.ac,
        trainable_params=cost["params"]["trainable"],
        frozen_params=cost["params"]["frozen"],
        tflop_per_step=round(cost["total"] / 1e12, 2),
        build_seconds=round(time.monotonic() - started, 1),
    )
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        out = engine(batch)
        loss = out.ce_sum / max(out.num_targets, 1) + out.aux_loss
        engine.backward(loss)
        engine.step()
        sync()
        seconds = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(seconds)
            emit("step", i=i - args.warmup, seconds=round(seconds, 4), loss=round(float(loss), 4))
        if time.monotonic() - started > args.max_seconds:
            emit("note", message=f"stopped after {len(times)} timed steps (--max-seconds)")
            break
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    median = statistics.median(times) if times else float("nan")
    emit(
        "summary",
        device=name,
        engine=path,
        sec_per_step=round(median, 4),
        positions_per_s=round(cost["positions"] / median, 1),
        samples_per_s=round(args.micro / median, 2),
        model_tflops_per_s=round(cost["total"] / median / 1e12, 1),
        mfu=round(cost["total"] / median / peak, 4) if peak else None,
        llm_only_mfu=round(cost["llm"] / median / peak, 4) if peak else None,
        peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.startswith("cuda")
        else None,
        total_seconds=round(time.monotonic() - started, 1),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
