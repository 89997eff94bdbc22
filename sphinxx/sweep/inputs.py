"""What a point reads and writes, for the pre-flight check (docs/operator.md, "Pre-flight checks").

A run that cannot read its weights or data fails minutes after its GPUs were allocated, in a
worker log. The operator (before a TrainingRun's first RayJob) and `sphinxx sweep check FILE` (from
a laptop) check every input first; this module says what to check, `sphinxx.storage.probe`
does the I/O. Pure: a resolved RunConfig in, a list out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sphinxx.schema.run import RunConfig

# A folder is usable as weights if it holds weight files; as a tokenizer if it holds one of its
# vocabularies (the file names transformers reads: fast tokenizer, SentencePiece, byte-level BPE).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Input:
    """One URI a point needs: `field` is the config path that names it (for messages)."""

    field: str
    uri: str
    access: Literal["read", "write"]
    needs_any: tuple[str, ...] = ()  # a folder must hold a file ending with one of these


def run_inputs(cfg: RunConfig) -> list[Input]:
    """Every URI the run will read, and the checkpoint prefix it will write, in config order."""
    found = [
        Input(f"model.{name}", uri, "read", WEIGHT_SUFFIXES)
        for name in ("llm_weights", "convnext_weights", "dinov2_weights")
        if (uri := getattr(cfg.model, name))
    ]
    if cfg.data.tokenizer:
        found.append(Input("data.tokenizer", cfg.data.tokenizer, "read", TOKENIZER_FILES))
    for i, source in enumerate(cfg.data.sources):
        manifest = source.uri.rstrip("/") + "/manifest.json"
        found.append(Input(f"data.sources[{i}] ({source.name})", manifest, "read"))
    found.append(Input("storage.uri", cfg.storage.uri, "write"))
    return found
