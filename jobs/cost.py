"""What a run costs before it runs: tokens, training FLOPs, GPU-hours, per-rank memory, staging.

Why: a sweep is planned against a GPU budget; `sphinxx sweep plan FILE --cost` prints these
per point and in total (docs/training.md, "Memory and cost estimates"). Pure functions over a
resolved `RunConfig`; the only input read from outside is the mixture's sample count when
`train.steps` is 0, which the caller passes in (`mixture_samples` reads the manifests).

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
- Per-rank memory: `sphinxx.model.memory.run_memory` at `parallel.min_workers`.
- Bytes to stage: an input (`stage_bytes`, computed from the weight URIs elsewhere); "unknown"
  when not given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sphinxx.jobs.progress import GPU_BF16_DENSE_PEAKS
from sphinxx.schema.run import RunConfig

DEFAULT_GPU = "H100"
DEFAULT_MFU = 0.4
GPU_NAMES = tuple(name for name, _, _ in GPU_BF16_DENSE_PEAKS)


def gpu_peak(name: str) -> tuple[float, str]:
    """(dense bf16 FLOP/s, datasheet source) of a GPU named as in the datasheet table (any case)."""
    for key, flops, source in GPU_BF16_DENSE_PEAKS:
        if key.lower() == name.strip().lower():
            return flops, source
    raise ValueError(f"unknown GPU {name!r}; choose one of {', '.join(GPU_NAMES)}")


def training_steps(cfg: RunConfig, samples_per_epoch: int | None) -> int | None:
    """Optimizer steps of the run: `train.steps`, or derived from the mixture's samples per epoch
    (None when steps derive from data and the count is unknown)."""
    if cfg.train.steps:
        return cfg.train.steps
    if samples_per_epoch is None:
        return None
    return math.ceil(math.ceil(cfg.data.epochs * samples_per_epoch) / cfg.train.global_batch)


@dataclass(frozen=True)
class UnitCosts:
    """FLOPs per unit of work of a run's model (`sphinxx.model.info.flops` at the run's seq_len)."""

    llm_per_token: float  # 6 N + 12 L d T at T = seq_len
    projector_per_image_token: float
    vision_per_view: float
    image_tokens_per_sample: int
    views_per_sample: int


def unit_costs(cfg: RunConfig, images_per_sample: int = 1) -> UnitCosts:
    """Per-token, per-image-token and per-view FLOPs of the run's model (meta device)."""
    import torch

    from sphinxx.jobs.build import model_args
    from sphinxx.model.anyres import SLOT_VIEW, image_slots, slot_tokens
    from sphinxx.model.info import flops, parameter_counts
    from sphinxx.model.memory import run_layout
    from sphinxx.model.sphinx import SphinxX

    with torch.device("meta"):
        model = SphinxX(model_args(cfg))
    cost = flops(model, parameter_counts(model), cfg.data.seq_len)
    slots = image_slots(100, 100, run_layout(cfg))
    image_tokens = min(images_per_sample * slot_tokens(slots), cfg.data.seq_len)
    return UnitCosts(
        llm_per_token=cost["llm_train_per_token"],
        projector_per_image_token=cost["projector_train_per_image_token"],
        vision_per_view=cost["vision_forward_per_view"],
        image_tokens_per_sample=image_tokens,
        views_per_sample=images_per_sample * sum(1 for s in slots if s == SLOT_VIEW),
    )


def run_cost(
    cfg: RunConfig,
    samples_per_epoch: int | None = None,
    gpu: str = DEFAULT_GPU,
    mfu: float = DEFAULT_MFU,
    stage_bytes: int | None = None,
    images_per_sample: int = 1,
    units: UnitCosts | None = None,
    memory: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cost of run `cfg`, JSON-ready (module docstring). `samples_per_epoch` is needed only
    when `train.steps` is 0; `units` and `memory` may be passed when already computed."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    peak, source = gpu_peak(gpu)
    if memory is None:
        from sphinxx.model.memory import run_memory

        memory = run_memory(cfg)
    units = units or unit_costs(cfg, images_per_sample)
    steps = training_steps(cfg, samples_per_epoch)
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
        "assumptions": [
            "tokens = steps x global_batch x seq_len: an upper bound (every sequence at its padded length)",
            f"{images_per_sample} square image(s) per sample on the {cfg.data.canvas} px canvas, every view "
            f"kept: {units.image_tokens_per_sample} image positions and {units.views_per_sample} tower views",
            "FLOPs: LLM 6N + 12 L d T per position at T = seq_len, projector 4P per image position, "
            "frozen towers' forward per view (sphinxx.model.info)",
            f"GPU-hours at MFU {mfu:g} of the {gpu} dense bf16 peak ({peak / 1e12:,.0f} TFLOP/s)",
        ],
    }
    if steps is None:
        return out
    samples = steps * cfg.train.global_batch
    tokens = samples * cfg.data.seq_len
    flops = (
        tokens * units.llm_per_token
        + samples * units.image_tokens_per_sample * units.projector_per_image_token
        + samples * units.views_per_sample * units.vision_per_view
    )
    out.update(tokens=tokens, flops=flops, gpu_hours=flops / (mfu * peak) / 3600)
    return out


def mixture_samples(cfg: RunConfig) -> int:
    """Samples per epoch of the run's mixture, from the sources' manifests (the data path the
    config names; raises OSError / ValueError when it cannot be read)."""
    from sphinxx.jobs.data.mixture import load_mixture

    return load_mixture(cfg.data).samples_per_epoch
