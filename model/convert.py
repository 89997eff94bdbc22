"""Convert a Hugging Face LLM checkpoint into our layout, streaming tensor by tensor.

Why: training builds our `Transformer` on the meta device and loads our names directly, so the
foreign names (state_dict_adapter.py) are dealt with once, offline. The converter reads one
source tensor at a time (safetensors `safe_open`, or mmap'ed `.bin` files for checkpoints that
ship only those), renames / unpacks it, and appends it to the current output shard, so memory
stays at about one output shard plus one layer's tensors, whatever the model size.

Paths are local directories. `sphinxx.model` never talks to object stores (import-linter
contract): the CLI (`sphinxx model convert --from hf SRC --flavor NAME --out URI`) stages an
`s3://` source to a local directory and uploads the output directory afterwards; a training job
stages `model.llm_weights` on its node (`sphinxx.storage.stage`, fetching only
`checkpoint_files`) and calls `load_llm_weights`, which takes either layout: ours, or a raw
Hugging Face folder converted while loading (`load_hf`), tensor by tensor.

Output directory:
    model-00001-of-0000N.safetensors ...   our parameter names, sharded
    model.safetensors.index.json           {"metadata": {"total_size"}, "weight_map": {name: file}}
    sphinxx_llm.json                       flavor, family, ModelArgs, source; written last, so
                                           its presence marks a complete conversion

    from sphinxx.model.convert import convert_hf, load_converted, read_model_args
    convert_hf("/data/TinyLlama-1.1B", "tinyllama-1.1b", "/data/tinyllama-sphinxx")
    args = read_model_args("/data/tinyllama-sphinxx")
    with torch.device("meta"): model = Transformer(args)
    model.to_empty(device="cuda"); load_converted("/data/tinyllama-sphinxx", model)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sphinxx.model.flavors import get_flavor
from sphinxx.model.llm import Transformer
from sphinxx.model.state_dict_adapter import get_adapter
from sphinxx.schema.decoder import ModelArgs
from sphinxx.schema.flavors import resolve

CONFIG_NAME = "sphinxx_llm.json"
INDEX_NAME = "model.safetensors.index.json"
FORMAT_VERSION = 1

ProgressFn = Callable[[int, int, str], None]  # (tensors done, tensors total, our tensor name)

# What a checkpoint folder needs besides its weight files (HF config, our config, the indexes).
_CHECKPOINT_META = (CONFIG_NAME, INDEX_NAME, "config.json", "pytorch_model.bin.index.json")


def checkpoint_files(names: Sequence[str]) -> list[str]:
    """The files of a checkpoint folder that loading it reads, from the names the folder holds.

    Hub folders often ship each checkpoint twice (`*.safetensors` and `pytorch_model*.bin`, 26 GB
    each for LLaMA2-13B) and extras (`original/consolidated.00.pth`, tokenizer files): only one
    format's top-level weight files are taken, safetensors first, plus the configs and indexes.
    """
    top = [n for n in names if "/" not in n]
    weights = [n for n in top if n.endswith(".safetensors")] or [n for n in top if n.endswith(".bin")]
    return sorted({*weights, *(n for n in top if n in _CHECKPOINT_META)})


def is_converted(path: str) -> bool:
    """Whether a local folder is in our layout (its completion marker exists)."""
    return os.path.exists(os.path.join(_local_dir(path, "checkpoint"), CONFIG_NAME))


def _local_dir(uri: str, what: str) -> str:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise ValueError(
            f"{what} {uri!r} is not a local path: sphinxx.model reads local directories only; "
            "stage remote checkpoints first (`sphinxx model convert` does this for s3:// URIs)"
        )
    return uri


class HFCheckpoint(Mapping[str, torch.Tensor]):
    """Lazy read-only mapping over a HF checkpoint directory: a tensor is read when indexed.

    Accepts `model.safetensors.index.json` + shards, a single `*.safetensors` file, or the
    `.bin` equivalents (opened with mmap, so they cost page cache, not RAM).
    """

    def __init__(self, path: str):
        self.path = path
        self.weight_map = self._weight_map(path)
        self._handles: dict[str, Any] = {}

    @staticmethod
    def _weight_map(path: str) -> dict[str, str]:
        if not os.path.isdir(path):
            raise ValueError(f"checkpoint directory {path!r} does not exist")
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if os.path.exists(os.path.join(path, index)):
                with open(os.path.join(path, index)) as f:
                    return dict(json.load(f)["weight_map"])
        files = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
        if "model.safetensors" in files:  # the name transformers reads first; others are not its weights
            files = ["model.safetensors"]
        files = files or sorted(n for n in os.listdir(path) if n.endswith(".bin"))
        if len(files) != 1:
            raise ValueError(
                f"{path!r} holds {len(files)} weight files and no index json; expected "
                "model.safetensors(.index.json) or pytorch_model.bin(.index.json)"
            )
        return {key: files[0] for key in HFCheckpoint._open(os.path.join(path, files[0])).keys()}

    @staticmethod
    def _open(file: str) -> Any:
        if file.endswith(".safetensors"):
            return safe_open(file, framework="pt", device="cpu")
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)

    def __getitem__(self, key: str) -> torch.Tensor:
        file = self.weight_map[key]
        if file not in self._handles:
            self._handles[file] = self._open(os.path.join(self.path, file))
        handle = self._handles[file]
        return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]

    def __contains__(self, key: object) -> bool:  # without reading the tensor
        return key in self.weight_map

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)


class _RecordingMapping(Mapping[str, torch.Tensor]):
    """Passes reads through and remembers which keys were read (to find unconverted tensors)."""

    def __init__(self, inner: Mapping[str, torch.Tensor]):
        self.inner = inner
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        return self.inner[key]

    def __contains__(self, key: object) -> bool:
        return key in self.inner

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class _ShardWriter:
    """Appends tensors to numbered safetensors shards of at most `max_bytes` (one tensor may exceed)."""

    def __init__(self, out: str, max_bytes: int):
        self.out, self.max_bytes = out, max_bytes
        self.shard: dict[str, torch.Tensor] = {}
        self.shard_bytes = 0
        self.files: list[str] = []
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.shard and self.shard_bytes + size > self.max_bytes:
            self.flush()
        self.shard[name] = tensor.contiguous()
        self.shard_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.shard:
            return
        tmp = f"shard-{len(self.files) + 1:05d}.safetensors.partial"
        save_file(self.shard, os.path.join(self.out, tmp), metadata={"format": "pt"})
        self.files.append(tmp)
        self.weight_map.update(dict.fromkeys(self.shard, tmp))
        self.shard, self.shard_bytes = {}, 0

    def finish(self) -> dict[str, str]:
        """Rename the partial shards to their final HF-style names; return the weight map."""
        self.flush()
        final = {}
        for i, tmp in enumerate(self.files, start=1):
            final[tmp] = f"model-{i:05d}-of-{len(self.files):05d}.safetensors"
            os.replace(os.path.join(self.out, tmp), os.path.join(self.out, final[tmp]))
        return {name: final[tmp] for name, tmp in self.weight_map.items()}


def _meta_shapes(args: ModelArgs) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = Transformer(args)
    # named_parameters lists a tied weight once, as the adapters do
    return {name: t.shape for name, t in model.named_parameters()}


def _read_hf_config(src: str) -> dict[str, Any] | None:
    path = os.path.join(src, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def convert_hf(
    src: str,
    flavor: str,
    out: str,
    *,
    family: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 2**30,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Convert the HF checkpoint directory `src` for `flavor` into our layout under `out`.

    family: adapter to use (default: the flavor's hf_family); overrides: ModelArgs fields to
    change (e.g. vocab_size); dtype: cast every tensor (default: keep the source dtype).
    Both paths are local (see module docstring). Raises ValueError when the checkpoint does
    not match the flavor, including any source tensor that the adapter did not consume.
    Returns the written sphinxx_llm.json content.
    """
    src, out = _local_dir(src, "source"), _local_dir(out, "output")
    # Experts are written whole; expert-parallel ranks slice them at load time.
    args = replace(get_flavor(flavor, **dict(overrides or {})), ep_size=1)
    family = family or resolve(flavor).hf_family
    adapter = get_adapter(family, args)
    if (config := _read_hf_config(src)) is not None:
        adapter.check_hf_config(config)
    os.makedirs(out, exist_ok=True)
    if os.listdir(out):
        raise ValueError(f"output directory {out!r} is not empty; choose a new one")

    source = _RecordingMapping(HFCheckpoint(src))
    shapes = _meta_shapes(args)
    writer = _ShardWriter(out, max_shard_bytes)
    for done, (name, tensor) in enumerate(adapter.from_hf(source), start=1):
        if name not in shapes or tuple(tensor.shape) != tuple(shapes[name]):
            raise ValueError(
                f"{name}: checkpoint gives shape {tuple(tensor.shape)}, flavor {flavor!r} "
                f"expects {tuple(shapes[name]) if name in shapes else 'no such tensor'}"
            )
        writer.add(name, tensor.to(dtype) if dtype is not None else tensor)
        if progress is not None:
            progress(done, len(shapes), name)
    unused = sorted(k for k in source if k not in source.read and not adapter.is_ignored(k))
    if unused:
        raise ValueError(
            f"{len(unused)} checkpoint tensors were not converted (wrong family or flavor?): {unused[:8]}"
        )
    weight_map = writer.finish()
    with open(os.path.join(out, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": writer.total_bytes}, "weight_map": weight_map}, f, indent=1)
    meta = {
        "format_version": FORMAT_VERSION,
        "flavor": flavor,
        "family": family,
        "source": src,
        "dtype": str(dtype) if dtype is not None else "source",
        "model_args": asdict(args),
    }
    with open(os.path.join(out, CONFIG_NAME), "w") as f:  # last: the completion marker
        json.dump(meta, f, indent=1)
    return meta


def read_model_args(path: str) -> ModelArgs:
    """ModelArgs of a converted directory (ep_size 1; set it before building for EP)."""
    path = _local_dir(path, "converted checkpoint")
    config = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(config):
        raise ValueError(f"{path!r} has no {CONFIG_NAME}: not a (complete) converted checkpoint")
    with open(config) as f:
        return ModelArgs(**json.load(f)["model_args"])


@torch.no_grad()
def load_converted(path: str, model: torch.nn.Module, *, ep_rank: int = 0, strict: bool = True) -> None:
    """Copy a converted checkpoint into `model` (materialised, e.g. after `to_empty`), tensor by tensor.

    A parameter whose first dimension is 1/ep_size of the stored one (experts built for EP)
    gets rows [ep_rank * n, (ep_rank + 1) * n) of the stored tensor, read lazily.
    """
    path = _local_dir(path, "converted checkpoint")
    read_model_args(path)  # refuses incomplete conversions
    with open(os.path.join(path, INDEX_NAME)) as f:
        weight_map: dict[str, str] = json.load(f)["weight_map"]
    targets = dict(model.named_parameters())  # a tied weight appears once
    missing = sorted(set(targets) - set(weight_map))
    unexpected = sorted(set(weight_map) - set(targets))
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint does not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    for file in sorted(set(weight_map.values())):
        with safe_open(os.path.join(path, file), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                if name not in targets:
                    continue
                target = targets[name]
                if target.is_meta:
                    raise ValueError("model is on the meta device; call model.to_empty(device=...) first")
                stored = handle.get_slice(name)
                rows = target.shape[0] if target.dim() else 0
                if target.dim() and stored.get_shape()[0] != rows:
                    tensor = stored[ep_rank * rows : (ep_rank + 1) * rows]
                else:
                    tensor = handle.get_tensor(name)
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ValueError(
                        f"{name}: stored shape {tuple(tensor.shape)} vs model {tuple(target.shape)}"
                    )
                target.copy_(tensor)


def load_llm_weights(path: str, model: Transformer, *, family: str, ep_rank: int = 0) -> str:
    """Load a local LLM checkpoint folder of either layout into `model`; returns the layout read.

    Ours (`sphinxx_llm.json` present) goes through `load_converted`; a raw Hugging Face folder
    (`config.json` + safetensors or `.bin` files, sharded with an index or not) is converted
    while loading by the `family`'s adapter (`load_hf`).
    """
    if is_converted(path):
        load_converted(path, model, ep_rank=ep_rank)
        return "sphinxx"
    load_hf(path, model, family=family, ep_rank=ep_rank)
    return "hf"


@torch.no_grad()
def load_hf(path: str, model: Transformer, *, family: str, ep_rank: int = 0) -> None:
    """Convert a raw Hugging Face checkpoint folder into `model` (materialised) while reading it.

    Tensors are read one at a time (safetensors `safe_open`, mmap'ed `.bin`), renamed or unpacked
    by the adapter and copied into the parameter, cast to its dtype: host memory holds one source
    tensor, not a shard or the model. An expert-parallel rank reads only its own experts. The
    folder's config.json must agree with the model (shapes, vocabulary, RoPE), and every source
    tensor must be used (other ranks' experts aside), so a wrong family or flavor fails loudly.
    """
    path = _local_dir(path, "checkpoint")
    args = model.args
    if not os.path.exists(os.path.join(path, "config.json")) and not any(
        n.endswith((".safetensors", ".bin")) for n in os.listdir(path)
    ):
        raise ValueError(
            f"{path!r} is neither a converted checkpoint (no {CONFIG_NAME}) nor a Hugging Face "
            "folder (no config.json and no weight files)"
        )
    adapter = get_adapter(family, args, **({"ep_rank": ep_rank} if family == "mixtral" else {}))
    if (config := _read_hf_config(path)) is not None:
        adapter.check_hf_config(config)
    source = _RecordingMapping(HFCheckpoint(path))
    targets = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in adapter.from_hf(source):
        target = targets.get(name)
        if target is None or tuple(target.shape) != tuple(tensor.shape):
            want = tuple(target.shape) if target is not None else "no such parameter"
            raise ValueError(
                f"{name}: checkpoint gives shape {tuple(tensor.shape)}, the model expects {want}"
            )
        if target.is_meta:
            raise ValueError("model is on the meta device; call model.to_empty(device=...) first")
        target.copy_(tensor)
        loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing:
        raise ValueError(
            f"{path}: the checkpoint has no tensors for {len(missing)} parameters: {missing[:8]}"
        )
    others = getattr(args, "ep_size", 1) > 1  # the other ranks' experts are left unread on purpose
    unused = sorted(
        k
        for k in source
        if k not in source.read and not adapter.is_ignored(k) and not (others and ".experts." in k)
    )
    if unused:
        raise ValueError(
            f"{path}: {len(unused)} checkpoint tensors were not used (wrong family or flavor?): {unused[:8]}"
        )
