"""The run config: one typed description of a training run, read the same way everywhere.

The job (`python -m sphinxx.jobs.train --config URI`), the local sweep runner and the operator
(which embeds this schema in its CRDs and admits every point of a sweep with it) all go through
this module. It is torch-free.

A config resolves as  defaults <- preset <- file <- data <- dotlist overrides  (omegaconf
structured configs do the layering and the type conversion of `key=value` strings):

    cfg = load_config(preset="debug", overrides=["train.lr=1e-4"])

Then one check runs, the same for every caller: each field's declared constraints
(`fields.validate`), the cross-field rules (`check_rules`), and the decoder the run would build
(`decoder_args`: the flavor's shape with `model.overrides`, the EP size and the kernel, validated
by `ModelArgs` exactly as the job builds it). Every error is a `SchemaError` whose path names the
field (`train.lr: ...`). `check_runnable` adds what only a run that is about to train needs (data
sources, a tokenizer); admission and the job's start both call it.

A resolved config is immutable: every section is a frozen dataclass, so what the driver read is
what every worker trains with; a caller that must derive another config (the operator's attempt
config, the job pinning its tracking store) builds a new one with `dataclasses.replace`. Each
part of the system is handed the section it uses (`ModelConfig`, `DataConfig`, `TrainConfig`,
`ParallelConfig`, `StorageConfig`, `TrackingConfig`, `EvalConfig`); only entry points see a whole `RunConfig`
(docs/architecture.md, "Each part reads its own section").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .credentials import refuse_credentials
from .decoder import ModelArgs
from .documents import load_yaml, read_yaml_file
from .fields import SchemaError, count, dump, field, nested, validate
from .flavors import NAMES, decoder_args, resolve
from .openapi import Dialect, schema_of
from .uris import STORAGE, TRACKING

MISSING: Any = "???"  # omegaconf's marker of a required value
DOMAINS = ("language", "vision", "vision-language", "ocr", "set-of-mark")
MOE_KERNELS = ("auto", "loop", "grouped", "megablocks")
PRECISIONS = ("bf16", "fp32")
SCHEDULES = ("cosine", "linear", "constant")
STORAGE_SCHEMES = ("s3://", "file://", "/")
NAME_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
MAX_STEPS = 100_000_000
MAX_WORKERS = 65_536

# The config is resolved by omegaconf, so its errors are ours under another name.
ConfigError = SchemaError


@dataclass(frozen=True)
class ModelOverrides:
    """Decoder fields a run may change (e.g. a smaller n_layers for an experiment);
    unset keep the flavor's."""

    dim: int | None = count(None, "model width (hidden size)", minimum=1, maximum=65_536)
    n_layers: int | None = count(None, "decoder blocks", minimum=1, maximum=1024)
    n_heads: int | None = count(None, "query heads (must divide dim)", minimum=1, maximum=1024)
    n_kv_heads: int | None = count(None, "key/value heads (must divide n_heads)", minimum=1, maximum=1024)
    ffn_dim: int | None = count(None, "SwiGLU hidden size of a dense FFN", minimum=1, maximum=1_000_000)
    vocab_size: int | None = count(
        None, "embedding rows (>= the tokenizer's size)", minimum=1, maximum=1_000_000
    )
    rope_theta: float | None = field(None, "RoPE base", exclusive_minimum=0, maximum=10_000_000_000)
    norm_eps: float | None = field(None, "RMSNorm epsilon", exclusive_minimum=0, maximum=1)
    tie_embeddings: bool | None = field(None, "share the embedding and output matrices")
    num_experts: int | None = count(None, "experts per MoE layer (0 = dense)", maximum=1024)
    top_k: int | None = count(None, "experts per token", minimum=1, maximum=64)
    moe_ffn_dim: int | None = count(None, "SwiGLU hidden size of one expert", minimum=1, maximum=1_000_000)


@dataclass(frozen=True)
class ModelConfig:
    flavor: str = field("debug", "model flavor (sphinxx.schema.flavors)", enum=NAMES)
    overrides: ModelOverrides = nested(ModelOverrides, "decoder fields to change, for experiments")
    llm_weights: str | None = field(
        None, "path or s3:// URI of base LLM weights (HF safetensors dir or ours)", uri=STORAGE
    )
    convnext_weights: str | None = field(
        None, "path or URI of the open_clip convnext_xxlarge checkpoint", uri=STORAGE
    )
    dinov2_weights: str | None = field(None, "path or URI of the facebook/dinov2-giant weights", uri=STORAGE)
    use_skip_token: bool = field(True, "replace fully padded sub-images by one learnable skip token")
    activation_checkpointing: bool = field(False, "recompute each decoder block in backward (7B and larger)")
    moe_kernel: str = field("auto", "expert kernel for MoE flavors", enum=MOE_KERNELS)


@dataclass(frozen=True)
class DataSource:
    name: str = field(
        MISSING, "unique source name (metrics, the data-fraction hash)", pattern=r"[A-Za-z0-9_.-]+"
    )
    uri: str = field(
        MISSING,
        "path or s3:// URI of the source root (manifest.json + JSONL shards)",
        min_length=1,
        uri=STORAGE,
    )
    weight: float = field(
        1.0,
        "repeat factor per epoch: 1 = one pass over the kept records, 0.5 = half",
        exclusive_minimum=0,
        maximum=1_000_000,
    )
    domain: str = field("language", "mixture domain of this source", enum=DOMAINS)


PACKING_MODES = ("packed", "padded")  # data.packing (jobs/data/packing.py)


@dataclass(frozen=True)
class DataConfig:
    sources: list[DataSource] = field([], "the mixture: sources with weights", max_items=1024)
    fraction: float = field(1.0, "data-scale axis: nested subset of every source, in (0, 1]",
                            exclusive_minimum=0, maximum=1)  # fmt: skip
    seq_len: int = count(
        4096, "max tokens per sequence including image tokens", minimum=64, maximum=1_048_576
    )
    canvas: int = field(448, "square canvas side in pixels; grid = canvas / 224", enum=(224, 448, 672, 896))
    convnext_view_size: int = field(256, "ConvNeXt input size per view", enum=(256, 512))
    tokenizer: str | None = field(None, "path or URI of Hugging Face tokenizer files", uri=STORAGE)
    heldout_records: int = count(
        0,
        "records per source held out for evaluation (at most a tenth of the source; 0: none)",
        maximum=1_000_000,
    )
    epochs: float = field(1.0, "passes over the (fractioned) mixture", exclusive_minimum=0, maximum=10_000)
    num_workers: int = count(2, "DataLoader worker processes per training worker", maximum=256)
    max_bad_record_ratio: float = field(0.01, "fail the run past this share of unreadable records",
                                        minimum=0, maximum=1)  # fmt: skip
    seed: int = count(0, "seed of the data-fraction hash and the sampler order", maximum=2**31 - 1)
    packing: str = field(
        "packed",
        "decoder rows of a micro-batch: packed (its samples first-fit into rows of at most seq_len "
        "positions, each sample attending only to itself; same loss, less padding) or padded (one "
        "sample per row, right-padded to the longest)",
        enum=PACKING_MODES,
    )


@dataclass(frozen=True)
class TrainConfig:
    steps: int = count(0, "optimizer steps; 0 derives them from the data: "
                          "ceil(samples * epochs / global_batch)", maximum=MAX_STEPS)  # fmt: skip
    global_batch: int = count(256, "sequences per optimizer step, constant at any world size", minimum=1)
    micro_batch: int = count(4, "sequences per worker per forward/backward", minimum=1, maximum=65_536)
    lr: float = field(2e-5, "peak learning rate", exclusive_minimum=0, maximum=10)
    min_lr: float = field(0.0, "learning rate at the end of the schedule", minimum=0, maximum=10)
    schedule: str = field("cosine", "decay after warmup", enum=SCHEDULES)
    warmup: float = field(0.01, "warmup length as a fraction of all steps (0.01 epoch in the paper)",
                          minimum=0, maximum=1)  # fmt: skip
    betas: list[float] = field([0.9, 0.95], "AdamW betas", min_items=2, max_items=2,
                               items={"minimum": 0, "maximum": 1})  # fmt: skip
    eps: float = field(1e-8, "AdamW epsilon", exclusive_minimum=0, maximum=1)
    weight_decay: float = field(0.0, "AdamW weight decay (norms and biases never decayed)", minimum=0,
                                maximum=10)  # fmt: skip
    grad_clip: float = field(
        2.0, "clip the global gradient norm to this; 0 disables", minimum=0, maximum=1_000_000
    )
    aux_loss_coef: float = field(0.01, "weight of the MoE load-balancing loss", minimum=0, maximum=100)
    precision: str = field("bf16", "compute precision (fp32 master weights either way)", enum=PRECISIONS)
    seed: int = count(0, "seed of model init and dropout-free RNG state", maximum=2**31 - 1)
    checkpoint_interval: int = count(500, "commit a checkpoint every this many steps (and at the end)",
                                     minimum=1, maximum=MAX_STEPS)  # fmt: skip
    async_save: bool = field(
        True,
        "periodic checkpoints copy the state to host memory at the step and upload and commit it in the "
        "background while training goes on (one save in flight); false: training waits for every upload. "
        "The final save and a stop's drain the one in flight and commit before the run ends",
    )
    log_interval: int = count(10, "print a progress line and log metrics every this many steps",
                              minimum=1, maximum=MAX_STEPS)  # fmt: skip
    progress_seconds: int = count(30, "rank 0 overwrites <storage.uri>/<run id>/progress.json (the "
                                      "operator's live status) at a logged step at most this often, "
                                      "and at every commit; 0: at every logged step",
                                  maximum=86_400)  # fmt: skip
    eval_interval: int = count(0, "evaluate on the held-out split (data.heldout_records) "
                                  "every this many steps and at the end; 0: at the end only",
                               maximum=MAX_STEPS)  # fmt: skip
    termination_grace_seconds: int = count(
        120, "after SIGTERM (preemption, node drain, resize) a worker finishes its step and commits "
             "a checkpoint within this many seconds; the worker pods' terminationGracePeriodSeconds",
        minimum=10, maximum=3600,
    )  # fmt: skip


@dataclass(frozen=True)
class ParallelConfig:
    # ZeRO-3 partitions the parameters themselves; the checkpoints, written by global coordinates
    # so that they restore at any world size, cover the optimizer partitions of ZeRO-1/2 only.
    zero_stage: int = field(2, "DeepSpeed ZeRO stage: 0, 1 or 2 (ZeRO-3 is not supported: checkpoints)",
                            enum=(0, 1, 2))  # fmt: skip
    ep_size: int = count(1, "expert-parallel group size for MoE flavors (divides the experts)",
                         minimum=1, maximum=1024)  # fmt: skip
    min_workers: int = count(1, "elastic lower bound of Ray Train workers", minimum=1, maximum=MAX_WORKERS)
    max_workers: int = count(1, "elastic upper bound of Ray Train workers", minimum=1, maximum=MAX_WORKERS)
    gpus_per_worker: int = count(1, "GPUs per Ray Train worker; 0 trains on CPU with gloo", maximum=16)
    cpus_per_worker: int = count(1, "CPUs reserved per Ray Train worker", minimum=1, maximum=1024)
    max_failures: int = count(1, "restarts of the worker group after a failure, per attempt (preemptions "
                                 "and resizes are not failures)", maximum=1000)  # fmt: skip
    max_preemptions: int = count(20, "preemptions of the run (a worker asked to stop: preStop, SIGTERM, "
                                     "a node drain) it resumes from; counted apart from max_failures",
                                 maximum=10_000)  # fmt: skip
    resize_check_seconds: int = count(30, "with min_workers < max_workers, how often rank 0 looks for room "
                                          "for more workers, to commit and restart bigger; 0: never",
                                      maximum=86_400)  # fmt: skip
    resize_settle_seconds: int = count(30, "how long room for more workers must last before the job "
                                           "stops to grow; below 20 s a segment can start before Ray "
                                           "Train counts a node that just joined (it re-reads nodes "
                                           "every 20 s) and restart at the old size",
                                       maximum=86_400)  # fmt: skip


@dataclass(frozen=True)
class StorageConfig:
    uri: str = field(
        MISSING, "checkpoint prefix: s3://bucket/prefix or file:///path", min_length=1, uri=STORAGE
    )
    endpoint_url: str | None = field(None, "S3 endpoint (MinIO, moto); default: AWS_ENDPOINT_URL or AWS")
    keep_last: int = count(3, "keep the newest K committed checkpoints", minimum=2, maximum=10_000)
    keep_best: int = count(1, "also keep the best M by best_metric", maximum=10_000)
    best_metric: str = field("loss", "manifest metric that ranks checkpoints (lower is better)", min_length=1)
    milestone_every: int = count(0, "keep every N-th step forever (0: none); the final step is always kept",
                                 maximum=MAX_STEPS)  # fmt: skip
    scratch: str | None = field(
        None,
        "absolute path of a volume checkpoint files are serialised through before upload; unset: "
        "straight from host memory to the store (no local disk). Needs scratch_gib",
        pattern=r"^/.*",
    )
    scratch_gib: int = count(
        0,
        "size of storage.scratch in GiB: the worker pods mount an emptyDir of this size there and request "
        "it as ephemeral-storage",
        maximum=1_000_000,
    )


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = field(
        True,
        "track to MLflow from rank 0; false: no MLflow run is made or needed (rank 0 gets a no-op tracker), "
        "e.g. for benchmarks on machines without an MLflow server",
    )
    uri: str | None = field(
        None,
        "MLflow tracking URI; default MLFLOW_TRACKING_URI, else a local store where the job starts",
        uri=TRACKING,
    )
    experiment: str = field("sphinxx", "MLflow experiment name", min_length=1, max_length=500)
    mlflow_run_id: str | None = field(None, "existing MLflow run to continue (set by the operator)")
    mlflow_parent_run_id: str | None = field(None, "parent (sweep) MLflow run, for nested child runs")
    await_run_id: bool = field(
        False,
        "set by the operator when it starts the job before the run's MLflow run exists: the job creates "
        "no run; rank 0 buffers its metrics until the operator writes mlflow_run_id into the stored config",
    )


@dataclass(frozen=True)
class BenchmarkTask:
    uri: str = field(
        MISSING, "the task JSONL (`sphinxx eval import` writes it; docs/evaluation.md)", min_length=1,
        uri=STORAGE,
    )  # fmt: skip
    name: str | None = field(
        None, "the benchmark's name in metrics and status (default: its records' `task`)",
        pattern=r"[A-Za-z0-9_.+-]+", max_length=100,
    )  # fmt: skip


@dataclass(frozen=True)
class BenchmarksConfig:
    tasks: list[BenchmarkTask] = field([], "benchmark task files scored in the point; empty: none",
                                       max_items=256)  # fmt: skip
    max_samples: int = count(200, "records scored per task, the first ones of its file; 0: every record",
                             maximum=10_000_000)  # fmt: skip
    max_new_tokens: int = count(32, "answer length limit in tokens", minimum=1, maximum=4096)
    temperature: float = field(0.0, "0: greedy decoding (the default); > 0 samples", minimum=0, maximum=10)
    top_p: float = field(1.0, "nucleus sampling mass when temperature > 0 (1: off)", exclusive_minimum=0,
                         maximum=1)  # fmt: skip
    seed: int = count(0, "sampling seed (temperature > 0)", maximum=2**31 - 1)
    batch_size: int = count(8, "questions per generate call on one rank", minimum=1, maximum=4096)
    at_eval_interval: bool = field(False, "also score every train.eval_interval steps, not only at the end")


@dataclass(frozen=True)
class EvalConfig:
    benchmarks: BenchmarksConfig = nested(
        BenchmarksConfig, "benchmarks scored by generation at the end of the point (docs/training.md)"
    )


@dataclass(frozen=True)
class RunConfig:
    run_id: str = field(
        "run",
        "stable run id: the Ray Train run name and the checkpoint folder",
        pattern=NAME_PATTERN,
        max_length=63,
    )
    model: ModelConfig = nested(ModelConfig)
    data: DataConfig = nested(DataConfig)
    train: TrainConfig = nested(TrainConfig)
    parallel: ParallelConfig = nested(ParallelConfig)
    storage: StorageConfig = nested(StorageConfig)
    tracking: TrackingConfig = nested(TrackingConfig)
    eval: EvalConfig = nested(EvalConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name != "run_id")


# ------------------------------------------------------------------------------ presets


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")]
        for p in resources.files("sphinxx.schema.presets").iterdir()
        if p.name.endswith(".yaml")
    )


def preset(name: str) -> dict[str, Any]:
    path = resources.files("sphinxx.schema.presets") / f"{name}.yaml"
    if not path.is_file():
        raise SchemaError("preset", f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    return parse_yaml(path.read_text(), f"preset {name}")


# ------------------------------------------------------------------------------ loading


def load_config(
    preset: str | None = None,
    file: str | None = None,
    overrides: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve defaults <- preset <- file (a YAML path) <- data (a dict) <- dotlist overrides.

    A file or the data may name their preset with a top-level `preset:` key. Returns a checked,
    plain `RunConfig` (dataclass instances, no omegaconf nodes).
    """
    # omegaconf and yaml load when a config is read, not when `sphinxx --help` registers commands.
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    file_data = read_yaml(file) if file else {}
    data = dict(data or {})
    for layer in (file_data, data, *map(_dotted, overrides or [])):
        refuse_credentials(layer, "")  # before anything is echoed back in an error
    name = preset or file_data.pop("preset", None) or data.get("preset")
    data.pop("preset", None)
    layers = [globals()["preset"](name)] if name else []
    layers += [layer for layer in (file_data, data) if layer]
    try:
        cfg = OmegaConf.structured(RunConfig)
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise SchemaError(missing[0], "is required but not set")
        run = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _as_schema_error(err) from None
    assert isinstance(run, RunConfig)
    check(run)
    return run


def _dotted(item: str) -> dict[str, Any]:
    """`a.b=value` (an override) as `{a: {b: value}}`, for the credential rule."""
    key, _, value = item.partition("=")
    nested: Any = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def read_yaml(path: str) -> dict[str, Any]:
    """The mapping of a run-config file, read by the one safe reader (`documents.py`: bounded
    size, aliases and depth, no duplicate keys)."""
    return _config_mapping(read_yaml_file(path, "config file"), path)


def parse_yaml(text: str | bytes, where: str) -> dict[str, Any]:
    """The mapping of a run config's text (a preset, a stored config), read as `read_yaml` reads."""
    return _config_mapping(load_yaml(text, where), where)


def _config_mapping(loaded: Any, where: str) -> dict[str, Any]:
    loaded = loaded or {}  # an empty file is an empty config
    if not isinstance(loaded, dict):
        raise SchemaError("", f"{where} must be a mapping of config sections, got {type(loaded).__name__}")
    return loaded


def _as_schema_error(err: Exception) -> SchemaError:
    path = str(getattr(err, "full_key", "") or "")
    message = str(err).splitlines()[0]
    if "not in struct" in str(err) or ("Key '" in message and "not in" in message):
        message = f"unknown key (check the spelling; `sphinxx config schema` lists every field): {message}"
    return SchemaError(path, message)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dump(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A checked RunConfig from plain data (what `to_dict` wrote, or a CR's config layer)."""
    return load_config(data=data)


def to_yaml(cfg: RunConfig) -> str:
    """Plain YAML of the resolved config (what `load_config(file=...)` reads back), via libyaml when
    present: the operator writes one per attempt, and the pure-Python emitter costs milliseconds."""
    import yaml  # as in load_config

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return str(yaml.dump(to_dict(cfg), Dumper=dumper, sort_keys=False))


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


# ------------------------------------------------------------------------------ checking


def check(cfg: RunConfig) -> RunConfig:
    """Field constraints, cross-field rules and the decoder it builds; raises SchemaError."""
    validate(cfg)
    check_rules(cfg)
    return cfg


def check_rules(cfg: RunConfig) -> None:
    par, train, data = cfg.parallel, cfg.train, cfg.data
    if par.min_workers > par.max_workers:
        raise SchemaError(
            "parallel.min_workers", f"({par.min_workers}) must be <= parallel.max_workers ({par.max_workers})"
        )
    if train.micro_batch * par.min_workers > train.global_batch:
        raise SchemaError(
            "train.global_batch",
            f"({train.global_batch}) is smaller than micro_batch x min_workers "
            f"({train.micro_batch} x {par.min_workers})",
        )
    if train.min_lr > train.lr:
        raise SchemaError("train.min_lr", f"({train.min_lr}) must be <= train.lr ({train.lr})")
    _decoder(cfg)
    if par.ep_size > 1:
        if par.min_workers % par.ep_size or par.max_workers % par.ep_size:
            raise SchemaError(
                "parallel.ep_size",
                f"({par.ep_size}) must divide min_workers ({par.min_workers}) "
                f"and max_workers ({par.max_workers})",
            )
    if cfg.model.moe_kernel == "megablocks" and par.gpus_per_worker == 0:
        raise SchemaError(
            "model.moe_kernel", "megablocks runs on CUDA only; use grouped or loop with gpus_per_worker 0"
        )
    if cfg.model.moe_kernel == "megablocks" and train.precision != "bf16":
        raise SchemaError(
            "model.moe_kernel", "megablocks computes in bf16 only; set train.precision bf16 or use grouped"
        )
    names = [s.name for s in data.sources]
    if len(set(names)) != len(names):
        raise SchemaError("data.sources", f"source names must be unique; got {names}")
    _check_benchmarks(cfg.eval.benchmarks)
    if (cfg.storage.scratch is None) != (cfg.storage.scratch_gib == 0):
        raise SchemaError(
            "storage.scratch_gib" if cfg.storage.scratch else "storage.scratch",
            "storage.scratch (a path) and storage.scratch_gib (its size, > 0) go together; "
            f"got scratch={cfg.storage.scratch!r}, scratch_gib={cfg.storage.scratch_gib}",
        )
    if cfg.storage.uri.startswith("memory://"):
        raise SchemaError("storage.uri", "memory:// lives in one process; Ray workers need s3:// or file://")
    if not cfg.storage.uri.startswith(STORAGE_SCHEMES):
        raise SchemaError(
            "storage.uri", f"must be an s3:// or file:// URI or an absolute path; got {cfg.storage.uri!r}"
        )


def _check_benchmarks(bench: BenchmarksConfig) -> None:
    uris = [t.uri for t in bench.tasks]
    if len(set(uris)) != len(uris):
        raise SchemaError("eval.benchmarks.tasks", f"a task file is listed twice: {uris}")
    names = [t.name for t in bench.tasks if t.name]
    if len(set(names)) != len(names):
        raise SchemaError("eval.benchmarks.tasks", f"task names must be unique; got {names}")


def _decoder(cfg: RunConfig) -> ModelArgs:
    """The decoder the job would build, checked in two stages so the error names the right field."""
    flavor = cfg.model.flavor
    chosen = {k: v for k, v in dump(cfg.model.overrides).items() if v is not None}
    try:
        decoder_args(flavor, **chosen)
    except ValueError as err:
        raise SchemaError("model.overrides", f"{err} (flavor {flavor})") from None
    if cfg.parallel.ep_size > 1 and not (chosen.get("num_experts") or resolve(flavor).num_experts):
        raise SchemaError("parallel.ep_size", f"expert parallelism needs an MoE flavor, not {flavor!r}")
    try:
        return run_decoder_args(cfg)
    except ValueError as err:
        raise SchemaError(
            "parallel.ep_size", f"({cfg.parallel.ep_size}) does not fit the model: {err}"
        ) from None


def run_decoder_args(cfg: RunConfig) -> ModelArgs:
    """The decoder of a run: flavor <- model.overrides <- the run's EP size, kernel, aux loss, seq_len.

    The job builds exactly this (sphinxx.jobs.build); admission checks it before any GPU is asked for.
    """
    chosen = {k: v for k, v in dump(cfg.model.overrides).items() if v is not None}
    base = decoder_args(cfg.model.flavor, **chosen)
    extra: dict[str, Any] = {"max_seq_len": max(cfg.data.seq_len, 64)}
    if base.is_moe:
        extra.update(
            ep_size=cfg.parallel.ep_size,
            moe_kernel=cfg.model.moe_kernel,
            aux_loss_coef=cfg.train.aux_loss_coef,
        )
    return dataclasses.replace(base, **extra)


def check_runnable(cfg: RunConfig) -> None:
    """What a run about to train needs beyond a valid config (the job refuses to start without it)."""
    if not cfg.data.sources:
        raise SchemaError(
            "data.sources", "is empty: list at least one source (`sphinxx data synth` makes some)"
        )
    if not cfg.data.tokenizer:
        raise SchemaError(
            "data.tokenizer", "is not set: give the path or URI of Hugging Face tokenizer files"
        )


def json_schema() -> dict[str, Any]:
    """JSON Schema of a fully resolved run config (`sphinxx config schema`)."""
    return schema_of(RunConfig, Dialect.JSON)
