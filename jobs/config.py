"""The run-config schema: one typed description of a training run, used everywhere.

The job (`python -m sphinxx.jobs.train --config URI`), the local sweep runner and the
operator (which embeds the schema in the CRDs and re-validates every spec) all read
runs through this module. It is deliberately torch-free: the operator imports it.

A config is resolved as  defaults <- preset <- file <- dotlist overrides:

    cfg = load_config(preset="debug", overrides=["train.lr=1e-4"])

Unknown keys, wrong types and bad values raise `ConfigError`, whose message names the
field path (`train.lr: ...`), so a user can act on it.

Field comments become the descriptions of the generated JSON/OpenAPI schema
(`json_schema()`); constraints live in each field's metadata so the schema and
`validate()` cannot disagree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Model flavors the job knows. The model package registers the same names (a test
# keeps the two in step); this list lets the torch-free operator reject typos at
# `kubectl apply` time.
FLAVORS = ("debug", "debug-moe", "tinyllama-1.1b", "internlm2-7b", "llama2-13b", "mixtral-8x7b")
# The published sizes: the parameter axis of a SPHINX-X scaling sweep.
PUBLISHED_FLAVORS = FLAVORS[2:]
DOMAINS = ("language", "vision", "vision-language", "ocr", "set-of-mark")
MOE_KERNELS = ("auto", "loop", "grouped", "megablocks")
PRECISIONS = ("bf16", "fp32")
SCHEDULES = ("cosine", "linear", "constant")


class ConfigError(ValueError):
    """A run config that cannot be used; `path` is the dotted field path at fault."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


def _f(default: Any = MISSING, help: str = "", **constraints: Any) -> Any:
    """A dataclass field whose help text and constraints feed the schema and validation."""
    meta = {"help": help, **constraints}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    flavor: str = _f("debug", "model flavor: debug, debug-moe or a published SPHINX-X size", enum=FLAVORS)
    overrides: dict[str, Any] = _f({}, "ModelArgs fields to override (e.g. n_layers), for experiments")
    llm_weights: str | None = _f(None, "path or s3:// URI of base LLM weights (HF safetensors dir or ours)")
    convnext_weights: str | None = _f(None, "path or URI of the open_clip convnext_xxlarge checkpoint")
    dinov2_weights: str | None = _f(None, "path or URI of the facebook/dinov2-giant weights")
    use_skip_token: bool = _f(True, "replace fully padded sub-images by one learnable skip token")
    activation_checkpointing: bool = _f(False, "recompute each decoder block in backward (7B and larger)")
    moe_kernel: str = _f("auto", "expert kernel for MoE flavors", enum=MOE_KERNELS)


@dataclass
class DataSource:
    name: str = _f(
        MISSING,
        "unique source name (used in metrics and the data-fraction hash)",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    uri: str = _f(MISSING, "path or s3:// URI of the source root (manifest.json + JSONL shards)", minLength=1)
    weight: float = _f(
        1.0,
        "repeat factor per epoch: 1 = one pass over the kept records, 2 = twice, 0.5 = half",
        exclusiveMinimum=0,
    )
    domain: str = _f("language", "mixture domain of this source", enum=DOMAINS)


@dataclass
class DataConfig:
    sources: list[DataSource] = _f([], "the mixture: sources with weights")
    fraction: float = _f(
        1.0, "data-scale axis: nested subset of every source, in (0, 1]", exclusiveMinimum=0, maximum=1
    )
    seq_len: int = _f(4096, "max tokens per sequence including image tokens", minimum=64)
    canvas: int = _f(448, "square canvas side in pixels; grid = canvas / 224", enum=(224, 448, 672, 896))
    convnext_view_size: int = _f(256, "ConvNeXt input size per view", enum=(256, 512))
    tokenizer: str | None = _f(None, "path or URI of Hugging Face tokenizer files")
    epochs: float = _f(1.0, "passes over the (fractioned) mixture", exclusiveMinimum=0)
    num_workers: int = _f(2, "DataLoader worker processes per training worker", minimum=0)
    max_bad_record_ratio: float = _f(
        0.01, "fail the run past this share of unreadable records", minimum=0, maximum=1
    )
    seed: int = _f(0, "seed of the data-fraction hash and the sampler order", minimum=0)


@dataclass
class TrainConfig:
    steps: int = _f(
        0, "optimizer steps; 0 derives them from the data: ceil(samples * epochs / global_batch)", minimum=0
    )
    global_batch: int = _f(256, "sequences per optimizer step, constant at any world size", minimum=1)
    micro_batch: int = _f(4, "sequences per worker per forward/backward", minimum=1)
    lr: float = _f(2e-5, "peak learning rate", exclusiveMinimum=0)
    min_lr: float = _f(0.0, "learning rate at the end of the schedule", minimum=0)
    schedule: str = _f("cosine", "decay after warmup", enum=SCHEDULES)
    warmup: float = _f(
        0.01, "warmup length as a fraction of all steps (0.01 epoch in the paper)", minimum=0, maximum=1
    )
    betas: list[float] = _f([0.9, 0.95], "AdamW betas", minItems=2, maxItems=2)
    eps: float = _f(1e-8, "AdamW epsilon", exclusiveMinimum=0)
    weight_decay: float = _f(0.0, "AdamW weight decay (norms and biases never decayed)", minimum=0)
    grad_clip: float = _f(2.0, "clip the global gradient norm to this; 0 disables", minimum=0)
    aux_loss_coef: float = _f(0.01, "weight of the MoE load-balancing loss", minimum=0)
    precision: str = _f("bf16", "compute precision (fp32 master weights either way)", enum=PRECISIONS)
    seed: int = _f(0, "seed of model init and dropout-free RNG state", minimum=0)
    checkpoint_interval: int = _f(
        500, "commit a checkpoint every this many steps (and at the end)", minimum=1
    )
    log_interval: int = _f(10, "print a progress line and log metrics every this many steps", minimum=1)


@dataclass
class ParallelConfig:
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage (ZeRO-3 only with ep_size 1)", enum=(0, 1, 2, 3))
    ep_size: int = _f(1, "expert-parallel group size for MoE flavors", minimum=1)
    min_workers: int = _f(1, "elastic lower bound of Ray Train workers", minimum=1)
    max_workers: int = _f(1, "elastic upper bound of Ray Train workers", minimum=1)
    gpus_per_worker: int = _f(1, "GPUs per Ray Train worker; 0 trains on CPU with gloo", minimum=0)
    cpus_per_worker: int = _f(1, "CPUs reserved per Ray Train worker", minimum=1)
    max_failures: int = _f(1, "in-attempt worker restarts Ray Train may make", minimum=0)


@dataclass
class StorageConfig:
    uri: str = _f(MISSING, "checkpoint prefix: s3://bucket/prefix, file:///path or memory://", minLength=1)
    endpoint_url: str | None = _f(None, "S3 endpoint (MinIO, moto); default: AWS_ENDPOINT_URL or AWS")
    keep_last: int = _f(3, "keep the newest K committed checkpoints", minimum=2)
    keep_best: int = _f(1, "also keep the best M by best_metric", minimum=0)
    best_metric: str = _f("loss", "manifest metric that ranks checkpoints (lower is better)")
    milestone_every: int = _f(
        0, "keep every N-th step forever (0: none); the final step is always kept", minimum=0
    )


@dataclass
class TrackingConfig:
    uri: str | None = _f(
        None,
        "MLflow tracking URI; default MLFLOW_TRACKING_URI, else MLflow's local store in the launch directory",
    )
    experiment: str = _f("sphinxx", "MLflow experiment name", minLength=1)
    run_id: str | None = _f(
        None, "existing MLflow run to continue (set by the operator); else one is created"
    )
    parent_run_id: str | None = _f(None, "parent (sweep) run, for nested child runs")


@dataclass
class RunConfig:
    name: str = _f(
        "run",
        "stable run id: the Ray Train run name and the checkpoint folder",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        maxLength=63,
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


# ---------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files("sphinxx.jobs.configs").iterdir()
        if p.name.endswith(".yaml")
    )


def _preset_yaml(name: str) -> str:
    path = resources.files("sphinxx.jobs.configs") / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("", f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    return path.read_text()


def load_config(
    preset: str | None = None,
    file: str | None = None,
    overrides: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve defaults <- preset <- file (a YAML path) <- data (a dict) <- dotlist overrides.

    A file may name its own preset with a top-level `preset:` key. Returns a validated,
    plain `RunConfig` (dataclass instances, no omegaconf nodes).
    """
    layers: list[Any] = []
    file_data = _read_yaml_file(file) if file else {}
    base_preset = preset or file_data.pop("preset", None) or (data or {}).get("preset")
    if base_preset:
        layers.append(_parse_yaml(_preset_yaml(base_preset), f"preset {base_preset}"))
    if file_data:
        layers.append(file_data)
    if data:
        layers.append({k: v for k, v in data.items() if k != "preset"})
    try:
        cfg = OmegaConf.structured(RunConfig)
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        _check_missing(cfg)
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _as_config_error(err) from None
    assert isinstance(run, RunConfig)
    validate(run)
    return run


def _read_yaml_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError("", f"cannot read config file {path}: {err.strerror}") from None
    return _parse_yaml(text, path)


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError("", f"{where} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError("", f"{where} must be a mapping of config sections, got {type(loaded).__name__}")
    return loaded


def _check_missing(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "is required but not set")


def _as_config_error(err: OmegaConfBaseException) -> ConfigError:
    path = getattr(err, "full_key", "") or ""
    message = str(err).splitlines()[0]
    if "is not in struct" in str(err) or "Key '" in message and "not in" in message:
        message = f"unknown key (check the spelling; `sphinxx config schema` lists every field): {message}"
    return ConfigError(str(path), message)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A validated RunConfig from a plain dict (e.g. a CR's spec.base)."""
    return load_config(data=data)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_hash(cfg: RunConfig) -> str:
    """A short, stable hash of the resolved config (recorded in checkpoint manifests)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """Dotted keys -> scalar values (MLflow params)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        else:
            out[prefix] = value

    walk("", to_dict(cfg))
    return out


# ---------------------------------------------------------------------------- validation


def validate(cfg: RunConfig) -> None:
    """Field constraints (from metadata) and cross-field rules; raises ConfigError."""
    _validate_fields(cfg, "")
    _validate_cross_fields(cfg)


def _validate_fields(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        path = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_fields(value, path + ".")
            continue
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                _validate_fields(item, f"{path}.{i}.")
        _check_constraints(path, value, f.metadata)


def _check_constraints(path: str, value: Any, meta: Any) -> None:
    import re

    if value is None:
        return
    if "enum" in meta and value not in meta["enum"]:
        raise ConfigError(path, f"must be one of {', '.join(map(str, meta['enum']))}; got {value!r}")
    if "minimum" in meta and value < meta["minimum"]:
        raise ConfigError(path, f"must be >= {meta['minimum']}; got {value!r}")
    if "maximum" in meta and value > meta["maximum"]:
        raise ConfigError(path, f"must be <= {meta['maximum']}; got {value!r}")
    if "exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"]:
        raise ConfigError(path, f"must be > {meta['exclusiveMinimum']}; got {value!r}")
    if "minLength" in meta and len(value) < meta["minLength"]:
        raise ConfigError(path, "must not be empty")
    if "maxLength" in meta and len(value) > meta["maxLength"]:
        raise ConfigError(path, f"must be at most {meta['maxLength']} characters; got {len(value)}")
    if "pattern" in meta and not re.match(meta["pattern"], value):
        raise ConfigError(path, f"must match {meta['pattern']}; got {value!r}")
    if "minItems" in meta and not meta["minItems"] <= len(value) <= meta.get("maxItems", len(value)):
        raise ConfigError(path, f"must have {meta['minItems']} items; got {len(value)}")


def _validate_cross_fields(cfg: RunConfig) -> None:
    par, train, data = cfg.parallel, cfg.train, cfg.data
    if par.min_workers > par.max_workers:
        raise ConfigError(
            "parallel.min_workers", f"({par.min_workers}) must be <= parallel.max_workers ({par.max_workers})"
        )
    if train.micro_batch * par.min_workers > train.global_batch:
        raise ConfigError(
            "train.global_batch",
            f"({train.global_batch}) is smaller than micro_batch x min_workers ({train.micro_batch} x {par.min_workers})",
        )
    if train.min_lr > train.lr:
        raise ConfigError("train.min_lr", f"({train.min_lr}) must be <= train.lr ({train.lr})")
    is_moe = cfg.model.flavor in ("debug-moe", "mixtral-8x7b")
    if par.ep_size > 1:
        if not is_moe:
            raise ConfigError(
                "parallel.ep_size", f"expert parallelism needs an MoE flavor, not {cfg.model.flavor!r}"
            )
        if par.min_workers % par.ep_size or par.max_workers % par.ep_size:
            raise ConfigError(
                "parallel.ep_size",
                f"({par.ep_size}) must divide min_workers ({par.min_workers}) and max_workers ({par.max_workers})",
            )
        if par.zero_stage == 3:
            raise ConfigError(
                "parallel.zero_stage",
                "ZeRO-3 works only with ep_size 1 (DeepSpeed MoE param groups need stage <= 2)",
            )
    if cfg.model.moe_kernel == "megablocks" and par.gpus_per_worker == 0:
        raise ConfigError(
            "model.moe_kernel", "megablocks runs on CUDA only; use grouped or loop with gpus_per_worker 0"
        )
    names = [s.name for s in data.sources]
    if len(set(names)) != len(names):
        raise ConfigError("data.sources", f"source names must be unique; got {names}")
    if not cfg.storage.uri.startswith(("s3://", "file://", "memory://", "/")):
        raise ConfigError(
            "storage.uri",
            f"must be an s3://, file:// or memory:// URI or an absolute path; got {cfg.storage.uri!r}",
        )


# ---------------------------------------------------------------------------- schema


def json_schema(cls: type = RunConfig) -> dict[str, Any]:
    """OpenAPI v3 / JSON schema of a config dataclass (as used inside the CRDs)."""
    import typing

    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        prop = _type_schema(hints[f.name])
        meta = dict(f.metadata)
        if meta.get("help"):
            prop["description"] = meta.pop("help")
        meta.pop("help", None)
        prop.update({k: list(v) if isinstance(v, tuple) else v for k, v in meta.items()})
        if f.default is MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        elif f.default is not dataclasses.MISSING and f.default is not None and f.default is not MISSING:
            prop["default"] = f.default
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _type_schema(tp: Any) -> dict[str, Any]:
    import types
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        out = _type_schema(inner[0])
        out["nullable"] = True
        return out
    if dataclasses.is_dataclass(tp):
        return json_schema(tp)
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": True, "x-kubernetes-preserve-unknown-fields": True}
    return {
        bool: {"type": "boolean"},
        int: {"type": "integer"},
        float: {"type": "number"},
        str: {"type": "string"},
    }[tp]
