"""The memory of a training run: `sphinxx.model.memory`'s estimate under the run's own settings.

Why here and not in the model: the estimate itself (`model.memory.memory_estimate`) takes a model
shape and a `TrainingSetup`, nothing of a run; deciding which setup a run trains under reads the
run config (its `parallel`, `train`, `data` and `model` sections) and the presets, which the model
layer never does (docs/architecture.md, "Each part reads its own section"). `sphinxx model info`
and `sphinxx sweep plan --cost` print what this returns; the job logs it at its start.
"""

from __future__ import annotations

from typing import Any

from sphinxx.jobs.build import sphinx_args
from sphinxx.jobs.data.loader import image_config
from sphinxx.model.anyres import num_visual_tokens
from sphinxx.model.memory import TrainingSetup, memory_estimate
from sphinxx.schema.flavors import resolve
from sphinxx.schema.run import RunConfig, load_config, preset_names, run_decoder_args


def setup_from_run(
    cfg: RunConfig, images_per_sample: int = 1, world_size: int | None = None
) -> TrainingSetup:
    """The `TrainingSetup` of a resolved run config.

    World size: `parallel.min_workers` unless given, the elastic lower bound, where each rank's
    ZeRO partition is largest. Image tokens: `images_per_sample` square images on the run's
    canvas (`data.canvas`) with every view kept (the most positions an image takes), capped at
    `data.seq_len`.
    """
    per_image = num_visual_tokens(100, 100, image_config(cfg.data, cfg.model.use_skip_token))
    return TrainingSetup(
        world_size=world_size or cfg.parallel.min_workers,
        zero_stage=cfg.parallel.zero_stage,
        ep_size=cfg.parallel.ep_size,
        precision=cfg.train.precision,
        micro_batch=cfg.train.micro_batch,
        seq_len=cfg.data.seq_len,
        activation_checkpointing=cfg.model.activation_checkpointing
        or run_decoder_args(cfg).activation_checkpointing,
        image_tokens=min(images_per_sample * per_image, cfg.data.seq_len),
    )


def flavor_run_config(flavor: str) -> RunConfig:
    """The run config `sphinxx model info` takes its defaults from: the flavor's preset
    (sphinxx/schema/presets/<flavor>.yaml) where there is one, else the schema's defaults for the flavor."""
    name = resolve(flavor).name
    data = {"model": {"flavor": name}, "storage": {"uri": "file:///unused"}}
    return load_config(preset=name if name in preset_names() else None, data=data)


def run_memory(cfg: RunConfig, setup: TrainingSetup | None = None) -> dict[str, Any]:
    """`memory_estimate` of the model a run config builds (the decoder admission checks, with
    `model.overrides`), under `setup` (default `setup_from_run(cfg)`)."""
    return memory_estimate(sphinx_args(cfg.model, run_decoder_args(cfg)), setup or setup_from_run(cfg))
