"""The standalone loader: open a `sphinxx model export` folder and answer questions about images.

Why: a sweep point should be evaluable where no sweep runs, by a team that has only the exported
folder. This module opens it (docs/model.md, "Export for standard evaluation") and needs only
torch, transformers, safetensors and Pillow: it imports the model layer's torch modules and
nothing of the training job, storage, the operator or the sweep core, and no Ray, DeepSpeed,
kopf, MLflow or S3 client (an import-linter contract in pyproject.toml; a test runs it in an
interpreter where those packages are not installed). Install it without the training stack:

    pip install --no-deps sphinxx && pip install torch transformers safetensors pillow

Use it from Python or as a command:

    from sphinxx.model.exported import load_exported
    model = load_exported("/data/eval/run-1")
    print(model.answer("What colour is the square?", image="square.png"))

    python -m sphinxx.model.exported /data/eval/run-1 --image square.png --prompt "What colour is it?"

What it does, from the folder alone: reads the manifest `sphinxx_multimodal.json` and refuses a
folder missing any file it lists (the error names the file); builds SphinxX from the model args
recorded there; loads the decoder from the Hub-layout files through the state-dict adapter, the
towers from `vision/<tower>/`, the projector and tags from `sphinxx_multimodal.safetensors`; loads
the tokenizer from `tokenizer.json`; writes each question in the recorded conversation template
after [BOS], processes each image with the recorded any-resolution settings, and generates with
`sphinxx.model.generate` (KV cache, greedy or sampled, stop at EOS or the template's stop string).
`sphinxx generate` on the same checkpoint gives the same tokens (a test holds them equal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from sphinxx.model.anyres import AnyResConfig, process_image
from sphinxx.model.convert import load_hf
from sphinxx.model.export import FORMAT_VERSION, MULTIMODAL_CONFIG, TOWERS
from sphinxx.model.generate import GenerationConfig, Prompt, generate
from sphinxx.model.sphinx import SphinxArgs, SphinxX
from sphinxx.model.vision import ConvNextTowerArgs, Dinov2TowerArgs, VisionArgs, load_strict
from sphinxx.schema.decoder import ModelArgs

ImageInput = Image.Image | str | None  # a PIL image, a local path or file:// URI, or no image


class ExportedFolderError(ValueError):
    """The folder is not a complete, readable export; the message names the folder and the file."""


@dataclass(frozen=True)
class Template:
    """The conversation template recorded by the export (conv_v1_2 for every sphinxx run)."""

    system: str
    separator: str
    human: str
    assistant: str
    image_marker: str
    stop: tuple[str, ...]

    def render(self, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
        """The text generation starts from: system, earlier turns, the question, the assistant prefix."""
        text = self.system + "\n" + self.separator
        for asked, answered in history:
            text += self.human + self._clean(asked) + self.separator + self.assistant
            text += " " + answered + self.separator
        return text + self.human + self._clean(question) + self.separator + self.assistant

    def _clean(self, question: str) -> str:
        # An image always comes first, outside the text: `<image>` markers are dropped.
        return question.replace(self.image_marker, "").strip() if self.image_marker in question else question


@dataclass
class ExportedModel:
    """A loaded export: the model, its tokenizer, image layout and template."""

    model: SphinxX
    tokenizer: Any
    processor: AnyResConfig
    template: Template
    bos_id: int
    eos_id: int
    manifest: dict[str, Any]

    def prompt(
        self, question: str, image: ImageInput = None, history: Sequence[tuple[str, str]] = ()
    ) -> Prompt:
        """[BOS] + the templated question, and the processed image (if any)."""
        tokens = [
            self.bos_id,
            *self.tokenizer(self.template.render(question, history), add_special_tokens=False)["input_ids"],
        ]
        processed = process_image(_open_image(image), self.processor) if image is not None else None
        return Prompt(tokens, processed)

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generation_config(self, **settings: Any) -> GenerationConfig:
        """GenerationConfig with this export's EOS and stop strings unless `settings` name them."""
        settings.setdefault("eos_ids", (self.eos_id,))
        settings.setdefault("stop_strings", self.template.stop)
        return GenerationConfig(**settings)

    def generate(
        self,
        requests: Sequence[tuple[str, ImageInput]],
        config: GenerationConfig | None = None,
        batch_size: int = 8,
    ) -> list[dict[str, Any]]:
        """(question, image) pairs -> one result each, in order: answer text, token ids, finish reason."""
        config = config or self.generation_config()
        results: list[dict[str, Any]] = []
        for start in range(0, len(requests), batch_size):
            prompts = [self.prompt(q, image) for q, image in requests[start : start + batch_size]]
            self._check_fits(prompts, config.max_new_tokens)
            for out in generate(self.model, prompts, config, decode=self.decode):
                results.append(
                    {"answer": (out.text or "").strip(), "tokens": out.tokens, "finish": out.finish}
                )
        return results

    def answer(self, question: str, image: ImageInput = None, **settings: Any) -> str:
        """The answer text to one question (greedy unless `temperature` is given)."""
        return str(self.generate([(question, image)], self.generation_config(**settings))[0]["answer"])

    def _check_fits(self, prompts: list[Prompt], new: int) -> None:
        limit = self.model.args.llm.max_seq_len
        for prompt in prompts:
            used = len(prompt.tokens) + (prompt.image.num_tokens if prompt.image is not None else 0)
            if used + new > limit:
                raise ValueError(
                    f"{used} prompt positions + {new} new tokens exceed the model's max_seq_len {limit}; "
                    "shorten the question or lower max_new_tokens"
                )


def read_manifest(folder: str) -> dict[str, Any]:
    """The manifest of an export folder, every file it lists present (ExportedFolderError otherwise)."""
    path = os.path.join(folder, MULTIMODAL_CONFIG)
    if not os.path.isdir(folder):
        raise ExportedFolderError(f"{folder}: no such folder")
    if not os.path.isfile(path):
        raise ExportedFolderError(
            f"{path}: missing; not a complete `sphinxx model export` folder (the manifest is written last)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, ValueError) as err:
        raise ExportedFolderError(f"{path}: not readable JSON ({err})") from None
    version = body.get("format_version") if isinstance(body, dict) else None
    if version != FORMAT_VERSION:
        raise ExportedFolderError(
            f"{path}: format_version {version!r}, this loader reads {FORMAT_VERSION}; "
            "export the checkpoint again"
        )
    missing = [name for name in body.get("files", []) if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise ExportedFolderError(
            f"{folder}: the export lists {', '.join(missing)} but the folder lacks "
            f"{'it' if len(missing) == 1 else 'them'}; copy the whole folder"
        )
    return body


def sphinx_args_of(manifest: Mapping[str, Any]) -> tuple[SphinxArgs, AnyResConfig]:
    """The model and the processor settings the manifest records."""
    recorded_llm = dict(manifest["llm"]["args"])
    if recorded_llm.get("moe_kernel") == "megablocks":  # CUDA-only; "auto" uses it where it runs
        recorded_llm["moe_kernel"] = "auto"
    llm = ModelArgs(**{**recorded_llm, "ep_size": 1, "activation_checkpointing": False})
    recorded = manifest["vision"]["args"]
    conv = recorded["convnext"]
    vision = VisionArgs(
        convnext=ConvNextTowerArgs(
            tuple(conv["depths"]), tuple(conv["hidden_sizes"]), conv["layer_norm_eps"]
        ),
        dinov2=Dinov2TowerArgs(**recorded["dinov2"]),
        convnext_view_size=recorded["convnext_view_size"],
        dino_view_size=recorded["dino_view_size"],
    )
    p = manifest["processor"]
    image = AnyResConfig(
        grid=p["grid"], convnext_view_size=p["convnext_view_size"], dino_view_size=p["dino_view_size"],
        use_skip_token=p["use_skip_token"],
    )  # fmt: skip
    return SphinxArgs(llm=llm, vision=vision, image=image), image


def template_of(recorded: Mapping[str, Any]) -> Template:
    """The template the manifest records (its `stop` list as a tuple)."""
    fields = ("system", "separator", "human", "assistant", "image_marker")
    return Template(**{k: str(recorded[k]) for k in fields}, stop=tuple(recorded["stop"]))


def load_exported(
    folder: str, *, tokenizer: str | None = None, dtype: torch.dtype = torch.float32
) -> ExportedModel:
    """Open an export folder on the CPU (module docstring). `tokenizer`: a folder with a
    `tokenizer.json` when the export has none (`--no-tokenizer`); `dtype`: the weights' dtype."""
    manifest = read_manifest(folder)
    try:
        args, processor = sphinx_args_of(manifest)
        template = template_of(manifest["template"])
    except (KeyError, TypeError, ValueError) as err:
        raise ExportedFolderError(f"{folder}/{MULTIMODAL_CONFIG}: bad or missing entry ({err!r})") from None
    with torch.device("meta"):
        model = SphinxX(args)
    model.to_empty(device="cpu")
    try:
        load_hf(folder, model.llm, family=manifest["llm"]["family"])
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise ExportedFolderError(f"{folder}: the decoder does not load: {err}") from None
    _load_multimodal(model, folder, manifest)
    for tower in TOWERS:
        where = os.path.join(folder, manifest["vision"][tower]["dir"], "model.safetensors")
        load_strict(getattr(model.vision, tower).model, _tensors(where), tower, where)
    model = model.to(dtype).eval()
    tok, bos, eos = _tokenizer(tokenizer or folder, manifest.get("token_ids") or {})
    return ExportedModel(model, tok, processor, template, bos, eos, manifest)


def _tensors(where: str) -> dict[str, torch.Tensor]:
    """A safetensors file of the export; a damaged one is an error naming it."""
    try:
        return load_file(where)
    except (OSError, SafetensorError) as err:
        raise ExportedFolderError(f"{where}: not a readable safetensors file ({err})") from None


def _load_multimodal(model: SphinxX, folder: str, manifest: Mapping[str, Any]) -> None:
    where = os.path.join(folder, manifest["weights"])
    state = _tensors(where)
    expected = {k for k in model.state_dict() if not k.startswith(("llm.", "vision."))}
    if set(state) != expected:
        raise ExportedFolderError(
            f"{where}: holds {sorted(state)}, the recorded model needs {sorted(expected)}"
        )
    model.load_state_dict(state, strict=False)


def _tokenizer(where: str, ids: Mapping[str, Any]) -> tuple[Any, int, int]:
    """The tokenizer of `where/tokenizer.json` and the BOS / EOS ids generation uses."""
    if not os.path.isfile(os.path.join(where, "tokenizer.json")):
        raise ExportedFolderError(
            f"{where}: no tokenizer.json (exported with --no-tokenizer?); pass tokenizer=FOLDER"
        )
    tok = PreTrainedTokenizerFast.from_pretrained(where)
    bos = ids.get("bos", tok.bos_token_id)
    eos = ids.get("eos", tok.eos_token_id)
    if bos is None or eos is None:
        raise ExportedFolderError(
            f"{where}: the tokenizer names no BOS or EOS token; the template needs both"
        )
    return tok, int(bos), int(eos)


def _open_image(image: Image.Image | str) -> Image.Image:
    """A PIL image, a local path or a `file://` URI as RGB (other URIs: copy the file here first)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if "://" in image and not image.startswith("file://"):
        raise ValueError(f"{image}: the loader reads local images only (a path or file:// URI)")
    image = image.removeprefix("file://")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"{image}: not a readable image ({type(err).__name__}: {err})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sphinxx.model.exported FOLDER --prompt TEXT [--image PATH]`: print the answer."""
    parser = argparse.ArgumentParser(prog="python -m sphinxx.model.exported", description=main.__doc__)
    parser.add_argument("folder", help="a folder written by `sphinxx model export`")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--image", help="a local image file the question is about (default: none)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit (128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--json", action="store_true", help="print answer, tokens and finish as JSON")
    args = parser.parse_args(argv)
    try:
        model = load_exported(args.folder)
        config = model.generation_config(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        )
        result = model.generate([(args.prompt, args.image)], config)[0]
    except ValueError as err:  # ExportedFolderError, a bad image or setting: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else result["answer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
