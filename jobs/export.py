"""Export a committed training checkpoint as one folder (`sphinxx model export`).

Why: any sweep point should go through a team's usual benchmark harnesses: text-only ones (lm-eval
and the like) load `AutoModelForCausalLM.from_pretrained(folder)`, and the multimodal model opens
with the standalone loader `sphinxx.model.exported`, outside any sweep. This is the I/O side: it
finds the checkpoint with the store's conventions (`sphinxx ckpt`: a run root `<prefix>/<run-id>`
or a pasted `.../checkpoints/step-N`, committed steps only), reads the run's `config.yaml` next to
`checkpoints/` (flavor, `model.overrides`, tokenizer, tower URIs, image layout), downloads only the
`model/` files of the step (never the optimizer shards, which are ~6x larger), reassembles the
experts (`model/expert-<g>.pt`, keys `<name>@expert<g>`) into full tensors, stages the tokenizer
and the towers the run loaded from URIs (they are not in checkpoints), and hands everything to
the pure writer `sphinxx.model.export` (docs/model.md, "Export for standard evaluation").

    from sphinxx.jobs.export import export_checkpoint
    summary = export_checkpoint("s3://bucket/sweeps/sweep-a/run-1", "/data/eval/run-1", step=2000)

The output folder is written as `<out>.partial` and renamed when complete, so a folder named
`<out>` is always a whole export.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import torch

from sphinxx.jobs.build import loaded_tower_prefixes, sphinx_args
from sphinxx.jobs.checkpoint.fragments import parse_expert_key
from sphinxx.jobs.data.loader import image_config
from sphinxx.jobs.data.template import ASSISTANT, HUMAN, IMAGE_MARKER, SEP, SYSTEM, load_tokenizer
from sphinxx.model.export import VISION_PREFIX, export_llm, export_multimodal, split_state
from sphinxx.model.sphinx import SphinxArgs
from sphinxx.model.vision import VisionEncoders, load_vision_weights, weight_files
from sphinxx.schema.flavors import resolve
from sphinxx.schema.run import RunConfig, load_config, parse_yaml, run_decoder_args
from sphinxx.storage import CheckpointInfo, CheckpointNotFoundError, CheckpointStore, StorageOptions
from sphinxx.storage.layout import locate, step_name
from sphinxx.storage.manifest import FileEntry
from sphinxx.storage.stage import stage
from sphinxx.storage.transfer import TransferProgress

MODEL_DIR = "model/"
# The conversation template as the standalone loader renders it (jobs/data/template.py, conv_v1_2):
# system + "\n" + separator, then per turn human + question + separator + assistant [+ " " + answer
# + separator]; generation starts after the last assistant prefix and stops at `stop`.
TEMPLATE = {
    "name": "conv_v1_2",
    "system": SYSTEM,
    "separator": SEP,
    "human": HUMAN,
    "assistant": ASSISTANT,
    "image_marker": IMAGE_MARKER,
    "stop": [SEP.strip()],
}


class CheckpointTensors(Mapping[str, torch.Tensor]):
    """The `model/` files of a downloaded checkpoint as one state dict of full tensors.

    The files are opened with mmap, so a tensor costs page cache, not RAM, until it is read; an
    expert parameter is the concatenation of its per-expert entries along dim 0 (expert-major
    rows, as `Checkpointer._load_model` reassembles them), built when it is indexed.
    """

    def __init__(self, model_dir: str):
        self.dense: dict[str, torch.Tensor] = {}
        self.experts: dict[str, dict[int, torch.Tensor]] = {}
        names = (
            sorted(n for n in os.listdir(model_dir) if n.endswith(".pt")) if os.path.isdir(model_dir) else []
        )
        if not names:
            raise ValueError(f"{model_dir} holds no model files (model/*.pt)")
        for name in names:
            blob = torch.load(os.path.join(model_dir, name), map_location="cpu", weights_only=True, mmap=True)
            for key, tensor in blob.items():
                parsed = parse_expert_key(key)
                if parsed is None:
                    self.dense[key] = tensor
                else:
                    self.experts.setdefault(parsed[0], {})[parsed[1]] = tensor
        for name, parts in self.experts.items():
            if sorted(parts) != list(range(len(parts))):
                missing = sorted(set(range(max(parts) + 1)) - set(parts))
                raise ValueError(f"checkpoint has no weights for experts {missing} of {name}")

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.dense:
            return self.dense[key]
        parts = self.experts[key]
        return torch.cat([parts[g] for g in range(len(parts))], dim=0)

    def shape(self, key: str) -> tuple[int, ...]:
        """The full tensor's shape without concatenating the experts."""
        if key in self.dense:
            return tuple(self.dense[key].shape)
        parts = self.experts[key]
        return (sum(int(t.shape[0]) for t in parts.values()), *parts[0].shape[1:])

    def __contains__(self, key: object) -> bool:
        return key in self.dense or key in self.experts

    def __iter__(self) -> Iterator[str]:
        yield from self.dense
        yield from self.experts

    def __len__(self) -> int:
        return len(self.dense) + len(self.experts)


def resolve_checkpoint(store: CheckpointStore, step: int | None) -> CheckpointInfo:
    """The committed checkpoint of `step` (None: the latest); errors name the URI and say what exists."""
    if step is None:
        info = store.latest()
        if info is None:
            raise CheckpointNotFoundError(
                f"{store.layout.checkpoints}: no committed checkpoint to export "
                "(the run has not saved one yet)",
                store.layout.checkpoints,
            )
        return info
    try:
        return store.get(step)
    except CheckpointNotFoundError:
        folders = store.scan()
        committed = [f.step for f in folders if f.committed]
        where = store.layout.step_dir(step)
        shown = ", ".join(map(str, committed[-8:])) or "none"
        if any(f.step == step for f in folders):
            raise CheckpointNotFoundError(
                f"{where}: step {step} is not committed (no manifest.json: a save in progress or a dead "
                f"attempt's partial folder); committed steps: {shown}",
                where,
            ) from None
        raise CheckpointNotFoundError(
            f"{where}: no checkpoint at step {step}; committed steps: {shown}", where
        ) from None


def read_run_config(store: CheckpointStore) -> RunConfig:
    """The run's resolved config (`config.yaml` beside `checkpoints/`), checked as the job checks it."""
    text = store.read_run_config()
    uri = store.layout.run_config
    if text is None:
        raise CheckpointNotFoundError(
            f"{uri}: the run config is missing; "
            "export needs it for the flavor, model.overrides and tokenizer",
            uri,
        )
    return load_config(data=parse_yaml(text, uri))


def local_output(out: str) -> str:
    """The output folder as a local path; it must not exist yet (or be empty)."""
    path = out[len("file://") :] if out.startswith("file://") else out
    if "://" in path:
        raise ValueError(f"the output {out!r} must be a local folder (copy it to object storage afterwards)")
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"the output {path!r} exists and is not an empty folder; choose a new one")
    return os.path.abspath(path)


def export_checkpoint(
    checkpoint: str,
    out: str,
    *,
    step: int | None = None,
    options: StorageOptions | None = None,
    tokenizer: str | None = None,
    with_tokenizer: bool = True,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 2**30,
    work_dir: str | None = None,
    log: TextIO | None = None,
) -> dict[str, Any]:
    """Write the committed checkpoint `checkpoint` (run root or step folder; `step`, else the
    latest) into the new local folder `out`; see the module docstring. Returns a summary.

    `tokenizer` overrides the run's `data.tokenizer` (e.g. a copy reachable from here);
    `with_tokenizer=False` writes no tokenizer files. `dtype` casts the weights (default: the
    checkpoint's). `work_dir`: where the `model/` files are downloaded (kept; default a temporary
    folder, removed afterwards).
    """
    log = log or sys.stderr
    started = time.monotonic()
    source = find_source(checkpoint, step, options)
    target = local_output(out)
    print(source.announcement(), file=log)
    staging = work_dir or tempfile.mkdtemp(prefix=f"sphinxx-export-{step_name(source.info.step)}-")
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer_uri = tokenizer or source.config.data.tokenizer
    try:
        source.download(staging, log)
        os.makedirs(partial)
        written = _write_folder(source, os.path.join(staging, "model"), partial,
                                tokenizer_uri if with_tokenizer else None, with_tokenizer, dtype,
                                max_shard_bytes, log)  # fmt: skip
        if os.path.isdir(target):
            os.rmdir(target)  # empty (checked above)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if work_dir is None:
            shutil.rmtree(staging, ignore_errors=True)
    llm_summary, token_ids = written
    print(
        f"exported step {source.info.step} as {llm_summary['architecture']} ({llm_summary['dtype']}, "
        f"{_mib(llm_summary['bytes'])}) to {target}",
        file=log,
    )
    return {
        **source.summary(target),
        **llm_summary,
        "tokenizer": token_ids is not None,
        "seconds": round(time.monotonic() - started, 1),
    }


@dataclass(frozen=True)
class ExportSource:
    """A committed step to export: its store, manifest entry, the run's config and model files."""

    store: CheckpointStore
    info: CheckpointInfo
    config: RunConfig
    files: list[FileEntry]  # the step's `model/` files (never the optimizer shards)

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files)

    @property
    def args(self) -> SphinxArgs:
        """The model the run trained (the decoder admission checked, the flavor's towers)."""
        return sphinx_args(self.config.model, run_decoder_args(self.config))

    def announcement(self) -> str:
        return (
            f"export {self.info.uri} (flavor {self.config.model.flavor}): "
            f"downloading {len(self.files)} model files, {_mib(self.size)} of "
            f"{_mib(self.info.manifest.total_bytes)} (no optimizer state)"
        )

    def summary(self, target: str) -> dict[str, Any]:
        return {
            "out": target,
            "checkpoint": self.info.uri,
            "step": self.info.step,
            "flavor": self.config.model.flavor,
            "downloaded_files": len(self.files),
            "downloaded_bytes": self.size,
        }

    def download(self, staging: str, log: TextIO) -> None:
        self.store.download(
            self.info.step, staging, select=lambda e: e.path.startswith(MODEL_DIR), progress=_progress(log)
        )


def find_source(checkpoint: str, step: int | None, options: StorageOptions | None) -> ExportSource:
    """The committed step `checkpoint` names (run root or step folder, `step` or the latest)."""
    layout, uri_step = locate(checkpoint)
    if step is not None and uri_step is not None and step != uri_step:
        raise ValueError(f"{checkpoint} names step {uri_step} but --step is {step}; give one of them")
    prefix, run_id = layout.root.rsplit("/", 1)
    store = CheckpointStore(prefix, run_id, options=options)
    info = resolve_checkpoint(store, step if step is not None else uri_step)
    config = read_run_config(store)
    files = [e for e in info.manifest.files if e.path.startswith(MODEL_DIR)]
    if not files:
        raise CheckpointNotFoundError(f"{info.uri}: the checkpoint holds no model/ files", info.uri)
    return ExportSource(store, info, config, files)


def _write_folder(
    source: ExportSource,
    model_dir: str,
    out: str,
    tokenizer_uri: str | None,
    with_tokenizer: bool,
    dtype: torch.dtype | None,
    max_shard_bytes: int,
    log: TextIO,
) -> tuple[dict[str, Any], dict[str, int | None] | None]:
    """The decoder, the tokenizer, the towers and the multimodal parts into `out`; (LLM summary, ids)."""
    args, cfg = source.args, source.config
    llm, multimodal, vision = split_state(CheckpointTensors(model_dir))
    token_ids = None
    if tokenizer_uri:
        token_ids = _write_tokenizer(tokenizer_uri, out, args.llm.vocab_size, log)
    elif with_tokenizer:
        print("  no tokenizer: the run config sets no data.tokenizer (give --tokenizer URI)", file=log)
    print(f"  writing the decoder to {out.removesuffix('.partial')}", file=log)
    llm_summary = export_llm(
        llm, args.llm, out, dtype=dtype, token_ids=token_ids,
        max_shard_bytes=max_shard_bytes, progress=_tensor_progress(log),
    )  # fmt: skip
    info = {
        "flavor": cfg.model.flavor,
        "vision_preset": resolve(cfg.model.flavor).vision,
        "tower_uris": {"convnext": cfg.model.convnext_weights, "dinov2": cfg.model.dinov2_weights},
        "tokenizer": tokenizer_uri,
        "source": {
            "checkpoint": source.info.uri,
            "run_id": source.info.manifest.run_id,
            "step": source.info.step,
            "config_hash": source.info.manifest.metadata.config_hash,
            "metrics": dict(source.info.manifest.metrics),
        },
    }
    towers = {**vision, **tower_tensors(source, log)}
    export_multimodal(
        multimodal, args, out, vision=towers, processor=image_config(cfg.data, cfg.model.use_skip_token),
        template=TEMPLATE, token_ids=token_ids, dtype=dtype, info=info,
    )  # fmt: skip
    return llm_summary, token_ids


def tower_tensors(source: ExportSource, log: TextIO) -> dict[str, torch.Tensor]:
    """The towers the run loaded from its URIs (`model.convnext_weights` / `model.dinov2_weights`),
    which checkpoints leave out: staged and read as training reads them, in our names (`vision.*`)."""
    prefixes = loaded_tower_prefixes(source.config.model)
    if not prefixes:
        return {}
    paths: dict[str, str | None] = {}
    for name in ("convnext_weights", "dinov2_weights"):
        uri = getattr(source.config.model, name)
        if uri:
            print(f"  vision tower from {uri}", file=log)
            what = f"model.{name}"
            paths[name] = stage(uri, select=weight_files, options=source.store.options, what=what).local_path
    with torch.device("meta"):
        towers = VisionEncoders(source.args.vision)  # the towers' shapes; loading assigns the tensors
    load_vision_weights(towers, paths.get("convnext_weights"), paths.get("dinov2_weights"))
    state = {VISION_PREFIX + k: v for k, v in towers.state_dict().items()}
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def _write_tokenizer(uri: str, out: str, vocab_size: int, log: TextIO) -> dict[str, int | None]:
    """Stage the tokenizer as training loads it, write its files into `out`; its special ids."""
    print(f"  tokenizer from {uri}", file=log)
    tok = load_tokenizer(uri)
    if len(tok) > vocab_size:
        raise ValueError(
            f"the tokenizer at {uri} has {len(tok)} ids, more than the model's vocab_size {vocab_size}"
        )
    tok.save_pretrained(out)
    return {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id}


def _progress(log: TextIO) -> Any:
    last = [0.0]

    def hook(p: TransferProgress) -> None:
        now = time.monotonic()
        if p.files_done == p.files_total or now - last[0] >= 5.0:
            last[0] = now
            print(f"  downloaded {p.files_done}/{p.files_total} files, {_mib(p.bytes_done)}", file=log)

    return hook


def _tensor_progress(log: TextIO) -> Any:
    last = [0.0]

    def hook(done: int, total: int, name: str) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= 5.0:
            last[0] = now
            print(f"  wrote {done}/{total} tensors ({name})", file=log)

    return hook


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
