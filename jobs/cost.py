"""What a run costs before it runs: tokens, training FLOPs, GPU-hours, per-rank memory, staging.

Why: a sweep is planned against a GPU budget; `sphinxx sweep plan FILE --cost` prints these
per point and in total (docs/training.md, "Memory and cost estimates"). `run_cost` and
`run_estimate` are the run-level reports (they read a whole `RunConfig`); the pieces they are made
of take sections or plain values (`training_steps`, `unit_costs`, `mixture_samples`). The only
input read from outside is the mixture's sample count when `train.steps` is 0, which the caller
passes in (`mixture_samples` reads the manifests).

- Steps: `train.steps`, or, when 0, ceil(ceil(samples per epoch x epochs) / global batch), as
  the job derives them (`jobs.data.mixture.Mixture.num_steps`).
- Tokens D = steps x global batch x seq_len: an upper bound, every sequence counted at its
  padded length (real sequences are shorter; the job's MFU counts real lengths).
- FLOPs (`sphinxx.model.info.flops`, PaLM's convention): per LLM position 6 N + 12 L d T at
  T = seq_len (N active non-embedding decoder parameters), the projector's 4 P per image
  position and the frozen towers' forward per view. Images: `images_per_sample` square images
  on the run's canvas with every view kept (1 + grid^2 views), their positions inside seq_len.
- GPU-hours = FLOPs / (MFU x the GPU's dense bf16 datasheet peak, `jobs.progress.GPU_BF16_DENSE_PEAKS`)
  / 3600; MFU 0.4 and H100 (SXM) unless given.
- Per-rank memory: `jobs.run_memory.run_memory` at `parallel.min_workers`.
- Checkpoint: bytes per save and per rank, the host memory a save's snapshot needs and its upload
  time at `upload_gb_per_s` per rank (`jobs.checkpoint_size`).
- Bytes to stage: an input (`stage_bytes`, computed from the weight URIs elsewhere); "unknown"
  when not given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from sphinxx.jobs.build import sphinx_args
from sphinxx.jobs.checkpoint_size import DEFAULT_UPLOAD_GB_PER_S, checkpoint_size
from sphinxx.jobs.data.loader import image_config
from sphinxx.jobs.data.mixture import load_mixture
from sphinxx.jobs.progress import GPU_BF16_DENSE_PEAKS
from sphinxx.jobs.run_memory import run_memory, setup_from_run
from sphinxx.model.anyres import SLOT_VIEW, AnyResConfig, image_slots, slot_tokens
from sphinxx.model.flavors import meta_sphinx
from sphinxx.model.info import flops, parameter_counts
from sphinxx.model.sphinx import SphinxArgs
from sphinxx.schema.run import DataConfig, RunConfig, TrainConfig, run_decoder_args

DEFAULT_GPU = "H100"
DEFAULT_MFU = 0.4
GPU_NAMES = tuple(name for name, _, _ in GPU_BF16_DENSE_PEAKS)


def gpu_peak(name: str) -> tuple[float, str]:
    """(dense bf16 FLOP/s, datasheet source) of a GPU named as in the datasheet table (any case)."""
    for key, peak, source in GPU_BF16_DENSE_PEAKS:
        if key.lower() == name.strip().lower():
            return peak, source
    raise ValueError(f"unknown GPU {name!r}; choose one of {', '.join(GPU_NAMES)}")


def training_steps(train: TrainConfig, epochs: float, samples_per_epoch: int | None) -> int | None:
    """Optimizer steps of a run: `train.steps`, or derived from the mixture's samples per epoch
    and `data.epochs` (None when steps derive from data and the count is unknown)."""
    if train.steps:
        return train.steps
    if samples_per_epoch is None:
        return None
    return math.ceil(math.ceil(epochs * samples_per_epoch) / train.global_batch)


@dataclass(frozen=True)
class UnitCosts:
    """FLOPs per unit of work of a run's model (`sphinxx.model.info.flops` at the run's seq_len)."""

    llm_per_token: float  # 6 N + 12 L d T at T = seq_len
    projector_per_image_token: float
    vision_per_view: float
    image_tokens_per_sample: int
    views_per_sample: int


def unit_costs(args: SphinxArgs, layout: AnyResConfig, seq_len: int, images_per_sample: int = 1) -> UnitCosts:
    """Per-token, per-image-token and per-view FLOPs of model `args` (meta device) at `seq_len`,
    images laid out as the run's processor lays them out (`layout`)."""
    model = meta_sphinx(args)
    cost = flops(model, parameter_counts(model), seq_len)
    slots = image_slots(100, 100, layout)
    image_tokens = min(images_per_sample * slot_tokens(slots), seq_len)
    return UnitCosts(
        llm_per_token=cost["llm_train_per_token"],
        projector_per_image_token=cost["projector_train_per_image_token"],
        vision_per_view=cost["vision_forward_per_view"],
        image_tokens_per_sample=image_tokens,
        views_per_sample=images_per_sample * sum(1 for s in slots if s == SLOT_VIEW),
    )


def run_units(cfg: RunConfig, images_per_sample: int = 1) -> UnitCosts:
    """`unit_costs` of the model a run builds, at its seq_len, on its canvas."""
    layout = image_config(cfg.data, cfg.model.use_skip_token)
    args = sphinx_args(cfg.model, run_decoder_args(cfg))
    return unit_costs(args, layout, cfg.data.seq_len, images_per_sample)


def run_cost(
    cfg: RunConfig,
    samples_per_epoch: int | None = None,
    gpu: str = DEFAULT_GPU,
    mfu: float = DEFAULT_MFU,
    stage_bytes: int | None = None,
    images_per_sample: int = 1,
    units: UnitCosts | None = None,
    memory: dict[str, Any] | None = None,
    upload_gb_per_s: float = DEFAULT_UPLOAD_GB_PER_S,
) -> dict[str, Any]:
    """The cost of run `cfg`, JSON-ready (module docstring). `samples_per_epoch` is needed only
    when `train.steps` is 0; `units` and `memory` may be passed when already computed;
    `upload_gb_per_s` is each rank's bandwidth to the store (the checkpoint's upload time)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    peak, source = gpu_peak(gpu)
    memory = memory if memory is not None else run_memory(cfg)
    units = units or run_units(cfg, images_per_sample)
    steps = training_steps(cfg.train, cfg.data.epochs, samples_per_epoch)
    out: dict[str, Any] = {
        "steps": steps,
        "steps_from": "train.steps" if cfg.train.steps else "data",
        "samples_per_epoch": samples_per_epoch,
        "tokens": None,
        "flops": None,
        "gpu_hours": None,
        "gpu": gpu,
        "gpu_peak_flops": peak,
        "gpu_peak_source": source,
        "mfu": mfu,
        "memory_per_rank_bytes": memory["bytes"]["total"],
        "memory_per_rank_gib": memory["gib"]["total"],
        "memory": memory,
        "stage_bytes": stage_bytes,
        "checkpoint": checkpoint_size(memory, upload_gb_per_s, scratch=cfg.storage.scratch is not None),
        "assumptions": _assumptions(cfg.data, units, images_per_sample, gpu, peak, mfu),
    }
    if steps is None:
        return out
    samples = steps * cfg.train.global_batch
    tokens = samples * cfg.data.seq_len
    total = (
        tokens * units.llm_per_token
        + samples * units.image_tokens_per_sample * units.projector_per_image_token
        + samples * units.views_per_sample * units.vision_per_view
    )
    out.update(tokens=tokens, flops=total, gpu_hours=total / (mfu * peak) / 3600)
    return out


def _assumptions(
    data: DataConfig, units: UnitCosts, images_per_sample: int, gpu: str, peak: float, mfu: float
) -> list[str]:
    return [
        "tokens = steps x global_batch x seq_len: an upper bound (every sequence at its padded length)",
        f"{images_per_sample} square image(s) per sample on the {data.canvas} px canvas, every view "
        f"kept: {units.image_tokens_per_sample} image positions and {units.views_per_sample} tower views",
        "FLOPs: LLM 6N + 12 L d T per position at T = seq_len, projector 4P per image position, "
        "frozen towers' forward per view (sphinxx.model.info)",
        f"GPU-hours at MFU {mfu:g} of the {gpu} dense bf16 peak ({peak / 1e12:,.0f} TFLOP/s)",
    ]


def run_estimate(cfg: RunConfig, world_size: int, steps: int, stage_bytes: int) -> dict[str, Any] | None:
    """What the job logs at its start: `run_cost` at this attempt's world size and step count.
    None (with a line on the log) when it cannot be made: an estimate never stops a run."""
    try:
        fixed = replace(cfg, train=replace(cfg.train, steps=steps))
        memory = run_memory(cfg, setup_from_run(cfg, world_size=world_size))
        return run_cost(fixed, memory=memory, stage_bytes=stage_bytes)
    except Exception as err:  # noqa: BLE001 - an estimate never stops a run
        print(f"[sphinxx] no cost estimate: {type(err).__name__}: {err}", flush=True)
        return None


def mixture_samples(data: DataConfig) -> int:
    """Samples per epoch of the mixture a `data` section names, from the sources' manifests
    (raises OSError / ValueError when they cannot be read)."""
    return load_mixture(data).samples_per_epoch
