"""Answers from a committed checkpoint (`sphinxx generate`): the I/O around `sphinxx.model.generate`.

What it does, in the order a request meets it (docs/model.md, "Generation"):

1. finds the committed step as `sphinxx model export` does (`jobs/export.py`: a run root or a
   pasted step folder, `s3://`, `file://` or a path; `--step` or the latest), reads the run's
   `config.yaml`, downloads only the step's `model/` files and reassembles the experts;
2. builds the run's SphinxX on the CPU (one process: every expert local, whatever EP size
   trained it), loads the checkpoint, and the frozen towers from the run's tower URIs when the
   checkpoint left them out;
3. loads the run's tokenizer (`data.tokenizer`, or `--tokenizer`) as training loads it;
4. per request: reads the image from its path or URI and processes it with the run's layout
   (`data.canvas`, `data.convnext_view_size`, skip tokens), writes the question in the run's
   template ending at " Assistant:" (`jobs/data/template.py`, `render_prompt`), and generates
   until EOS, a stop string (default "###", the template's turn separator) or the token limit.

    from sphinxx.jobs.generate import load_generator, read_requests
    generator = load_generator("s3://bucket/sweeps/sweep-a/run-1")
    answers = generator.answer(read_requests("requests.jsonl"), GenerationConfig(max_new_tokens=64))
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TextIO

import torch
from PIL import Image

from sphinxx.jobs.build import loaded_tower_prefixes
from sphinxx.jobs.data.loader import image_config
from sphinxx.jobs.data.template import SEP, ConversationEncoder, load_tokenizer
from sphinxx.jobs.export import CheckpointTensors, ExportSource, find_source
from sphinxx.model.anyres import AnyResConfig, process_image
from sphinxx.model.generate import Generated, GenerationConfig, Prompt, generate
from sphinxx.model.sphinx import SphinxX
from sphinxx.model.vision import weight_files
from sphinxx.schema.documents import load_json, read_document
from sphinxx.storage import StorageOptions
from sphinxx.storage import uri as uri_mod
from sphinxx.storage.objectfs import open_fs
from sphinxx.storage.stage import stage

DEFAULT_STOP = SEP.strip()  # "###": the model ends an answer with the template's "\n###"


@dataclass(frozen=True)
class Request:
    """One question, about one image (a path or URI) or none."""

    prompt: str
    image: str | None = None
    id: str | None = None


def read_requests(path: str) -> list[Request]:
    """Requests from a JSONL file: one object a line, `prompt` (text), optional `image` (path or
    URI) and `id`; blank lines are skipped. A bad line is an error naming the file and line."""
    lines = read_document(path, what="--requests").decode("utf-8", errors="replace").splitlines()
    requests = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        item = load_json(line, where)
        if not isinstance(item, dict):
            raise ValueError(
                f"{where}: a request is a JSON object with a 'prompt', got {type(item).__name__}"
            )
        unknown = sorted(set(item) - {"prompt", "image", "id"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: prompt, image, id)")
        prompt, image, rid = item.get("prompt"), item.get("image"), item.get("id")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: 'prompt' must be a non-empty string")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise ValueError(f"{where}: 'image' must be a path or URI string")
        requests.append(Request(prompt, image, None if rid is None else str(rid)))
    if not requests:
        raise ValueError(f"{path}: no requests (one JSON object a line)")
    return requests


def read_image(ref: str, options: StorageOptions | None = None) -> Image.Image:
    """The RGB image at a local path or a URI (`s3://`, `file://`); errors name the reference."""
    uri = uri_mod.normalize(ref)
    data = open_fs(uri, options).read_bytes(uri)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a file that is not an image
        raise ValueError(f"{ref}: not a readable image ({type(err).__name__}: {err})") from None
    return image.convert("RGB")


@dataclass
class Generator:
    """A loaded checkpoint, ready to answer: the model, its tokenizer and the run's image layout."""

    model: SphinxX
    encoder: ConversationEncoder
    image: AnyResConfig
    checkpoint: str  # the committed step's URI
    step: int
    options: StorageOptions | None = None
    tokens_seen: int = 0  # the step's committed `tokens_seen` (0 if it has none)

    def prompt(self, request: Request) -> Prompt:
        """The request as model input: the processed image and [BOS] + the templated question."""
        processed = None
        if request.image is not None:
            processed = process_image(read_image(request.image, self.options), self.image)
        tokens = self.encoder.encode_prompt(request.prompt)
        return Prompt(tokens, processed)

    def decode(self, ids: list[int]) -> str:
        return str(self.encoder.tokenizer.decode(ids, skip_special_tokens=True))

    def answer(
        self, requests: Sequence[Request], config: GenerationConfig, batch_size: int = 8
    ) -> list[dict[str, Any]]:
        """One result per request, in order: id, prompt, image, answer text, finish reason, tokens."""
        config = replace(config, eos_ids=config.eos_ids or (self.encoder.eos_id,))
        self._check_length(config)
        results: list[dict[str, Any]] = []
        for start in range(0, len(requests), batch_size):
            chunk = list(requests[start : start + batch_size])
            prompts = [self.prompt(r) for r in chunk]
            self._check_fits(chunk, prompts, config.max_new_tokens)
            outputs: list[Generated] = generate(self.model, prompts, config, decode=self.decode)
            for request, out in zip(chunk, outputs, strict=True):
                results.append({
                    "id": request.id, "prompt": request.prompt, "image": request.image,
                    "answer": (out.text or "").strip(), "finish": out.finish, "new_tokens": len(out.tokens),
                })  # fmt: skip
        return results

    def _check_length(self, config: GenerationConfig) -> None:
        limit = self.model.args.llm.max_seq_len
        if config.max_new_tokens >= limit:
            raise ValueError(
                f"--max-new-tokens {config.max_new_tokens} leaves no room in max_seq_len {limit}"
            )

    def _check_fits(self, requests: list[Request], prompts: list[Prompt], new: int) -> None:
        limit = self.model.args.llm.max_seq_len
        for request, prompt in zip(requests, prompts, strict=True):
            used = len(prompt.tokens) + (prompt.image.num_tokens if prompt.image is not None else 0)
            if used + new > limit:
                name = request.id or request.prompt[:40]
                raise ValueError(
                    f"request {name!r}: {used} prompt positions + {new} new tokens exceed the model's "
                    f"max_seq_len {limit}; shorten the prompt or lower --max-new-tokens"
                )


def load_generator(
    checkpoint: str,
    *,
    step: int | None = None,
    options: StorageOptions | None = None,
    tokenizer: str | None = None,
    log: TextIO | None = None,
) -> Generator:
    """The committed step `checkpoint` names, loaded on the CPU with its tokenizer (module docstring)."""
    log = log or sys.stderr
    source = find_source(checkpoint, step, options)
    tokenizer_uri = tokenizer or source.config.data.tokenizer
    if not tokenizer_uri:
        raise ValueError("the run config sets no data.tokenizer; give --tokenizer URI")
    print(f"generate from {source.info.uri} (flavor {source.config.model.flavor})", file=log)
    staging = tempfile.mkdtemp(prefix="sphinxx-generate-")
    try:
        source.download(staging, log)
        model = build_from_checkpoint(source, os.path.join(staging, "model"), options)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    encoder = ConversationEncoder(load_tokenizer(tokenizer_uri), source.config.data.seq_len)
    if len(encoder.tokenizer) > model.args.llm.vocab_size:
        raise ValueError(
            f"the tokenizer at {tokenizer_uri} has {len(encoder.tokenizer)} ids, more than the model's "
            f"vocab_size {model.args.llm.vocab_size}"
        )
    layout = image_config(source.config.data, source.config.model.use_skip_token)
    tokens = source.info.manifest.metrics.get("tokens_seen", 0)
    tokens_seen = int(tokens) if isinstance(tokens, int | float) else 0
    return Generator(model, encoder, layout, source.info.uri, source.info.step, options, tokens_seen)


def build_from_checkpoint(source: ExportSource, model_dir: str, options: StorageOptions | None) -> SphinxX:
    """The run's SphinxX on the CPU in fp32 with the step's weights (every expert local) and the
    towers from their URIs when the checkpoint left them out (`jobs.build.loaded_tower_prefixes`)."""
    args = source.args
    args = replace(args, llm=replace(args.llm, ep_size=1, activation_checkpointing=False))
    with torch.device("meta"):
        model = SphinxX(args)
    model.to_empty(device="cpu")
    state = CheckpointTensors(model_dir)
    expected = model.state_dict()
    from_uris = loaded_tower_prefixes(source.config.model)
    missing = [k for k in expected if k not in state and not k.startswith(from_uris or ("\0",))]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{source.info.uri}: the checkpoint does not fit the run's model "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    model.load_state_dict({k: state[k] for k in state}, strict=False)
    towers = {}
    for name in ("convnext_weights", "dinov2_weights"):
        uri = getattr(source.config.model, name)
        if uri:
            towers[name] = stage(uri, select=weight_files, options=options, what=f"model.{name}").local_path
    if towers:
        model.load_vision(towers.get("convnext_weights"), towers.get("dinov2_weights"))
    return model.eval()
