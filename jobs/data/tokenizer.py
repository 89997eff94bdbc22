"""Which files make a tokenizer, and how a folder of them loads (docs/training.md, "Tokenizers").

A folder loads by the first rule that fits (`loader_for`), never running remote code unless asked:

1. `tokenizer.json`: transformers' generic `PreTrainedTokenizerFast`, which runs the `tokenizers`
   pipeline exactly as the file writes it (TinyLlama, Llama 2, Mixtral). Not `AutoTokenizer`:
   transformers 5 builds a `LlamaTokenizer` with a pipeline of its own (a Metaspace pre-tokenizer),
   ignoring the file's normaliser, and so tokenises text that starts with a space differently
   from the SentencePiece model the checkpoint was trained with.
2. `tokenizer.model` (SentencePiece), no `tokenizer.json`: `PreTrainedTokenizerFast` again, which
   converts the model following its own normaliser spec, in `legacy` mode (the dummy prefix even
   before a leading space, as `SentencePieceProcessor.encode` adds it), whatever class or
   `auto_map` the config names. InternLM2 publishes exactly this folder with an `auto_map` to its
   remote `InternLM2Tokenizer`, which encodes with `sp_model.encode`, BOS `<s>`=1, EOS `</s>`=2,
   pad `</s>`, BOS added, EOS not; so nothing of the remote code is needed. Every load checks the
   conversion against SentencePiece itself on `PROBE_TEXT` and refuses a difference.
3. Any other vocabulary (`vocab.json` + `merges.txt`, `vocab.txt`, ...): `AutoTokenizer`.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import sentencepiece
from tokenizers import Tokenizer

# Everything a tokenizer load reads. `config.json`: AutoTokenizer reads it when the tokenizer
# config names no class. `tokenization*.py`: remote code, run only with trust_remote_code.
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        "config.json",
    }
)
REMOTE_CODE = "tokenization*.py"
# The files that carry a vocabulary: without one of them nothing loads.
VOCABULARY_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)

# What a conversion gets wrong first: leading and repeated spaces, a tab, newlines, digits (split
# one by one in Llama's model), CJK, an emoji (byte fallback) and the template's separators.
PROBE_TEXT = (
    "  Leading spaces,  two inside and a tab\there.\n\n### Human: What is 12 + 30?\n###"
    " Assistant: 12 + 30 = 42.\n你好，世界。🙂 end "
)

Loader = Literal["tokenizer.json", "sentencepiece", "auto"]


class TokenizerFilesError(ValueError):
    """The files of a tokenizer folder cannot make the tokenizer a run needs; the message names it."""


class NoTokenizerFilesError(TokenizerFilesError):
    """The folder holds no vocabulary file."""


def tokenizer_files(names: Iterable[str]) -> list[str]:
    """The names among a folder's file names that a tokenizer load reads, sorted; never weights.

    Names are relative to the folder; nested ones are dropped (tokenizer files are flat)."""
    keep = {n for n in names if "/" not in n and (n in TOKENIZER_FILES or fnmatch.fnmatch(n, REMOTE_CODE))}
    return sorted(keep)


def loader_for(names: Iterable[str], uri: str) -> Loader:
    """Which rule of the module docstring loads a folder holding `names`."""
    present = set(tokenizer_files(names))
    if "tokenizer.json" in present:
        return "tokenizer.json"
    if "tokenizer.model" in present:
        return "sentencepiece"
    if present.intersection(VOCABULARY_FILES):
        return "auto"
    raise NoTokenizerFilesError(
        f"no tokenizer files under {uri}: expected one of {', '.join(VOCABULARY_FILES)}"
    )


def first_difference(ours: Sequence[int], reference: Sequence[int]) -> int | None:
    """Index of the first differing id (the shorter length if one is a prefix), None when equal."""
    for i, (a, b) in enumerate(zip(ours, reference, strict=False)):
        if a != b:
            return i
    return None if len(ours) == len(reference) else min(len(ours), len(reference))


def load_local(folder: str, uri: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a local folder of tokenizer files; `uri` names it in errors."""
    if not os.path.isdir(folder):
        raise NoTokenizerFilesError(f"no tokenizer files under {uri}: the folder does not exist")
    how = loader_for(os.listdir(folder), uri)
    # lazy: transformers takes seconds to import; the file rules above (staging, `tokenizer_files`)
    # and whoever imports the template without loading a tokenizer must not pay that.
    if how == "auto":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)

    from transformers import PreTrainedTokenizerFast  # lazy: as AutoTokenizer above

    config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    if how == "tokenizer.json":
        defined = Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).get_vocab_size(
            with_added_tokens=True
        )
        # The file's post-processor decides BOS/EOS for add_special_tokens=True.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    else:
        model_path = os.path.join(folder, "tokenizer.model")
        pieces = sentencepiece.SentencePieceProcessor(model_file=model_path).get_piece_size()
        added = [int(i) for i in config.get("added_tokens_decoder") or {}]
        defined = max([pieces, *(i + 1 for i in added)])
        tokenizer = PreTrainedTokenizerFast.from_pretrained(
            folder,
            legacy=True,
            # Llama's and InternLM2's defaults; explicit, or the generic class adds no BOS.
            add_bos_token=bool(config.get("add_bos_token", True)),
            add_eos_token=bool(config.get("add_eos_token", False)),
        )
        _check_against_sentencepiece(tokenizer, model_path, uri)
    undefined = undefined_special_tokens(tokenizer, defined)
    if undefined:
        raise TokenizerFilesError(
            f"the tokenizer config of {uri} names special tokens its vocabulary of {defined} ids lacks: "
            f"{', '.join(undefined)}"
        )
    return tokenizer


def undefined_special_tokens(tokenizer: Any, defined: int) -> list[str]:
    """`role=token` for each BOS/EOS/pad the tokenizer files do not define (ids `defined` and
    up). transformers 5 silently appends such a token to the vocabulary, past the embedding of
    the model; it would index out of range or train an embedding row the model does not have."""
    out = []
    for role in ("bos", "eos", "pad"):
        token, idx = getattr(tokenizer, f"{role}_token", None), getattr(tokenizer, f"{role}_token_id", None)
        if idx is not None and int(idx) >= defined:
            out.append(f"{role}={token}")
    return out


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        value = json.load(f)
    return value if isinstance(value, dict) else {}


def _check_against_sentencepiece(tokenizer: Any, model_path: str, uri: str) -> None:
    """Refuse a conversion that would train on other ids than the model's own tokenizer gives."""
    reference = sentencepiece.SentencePieceProcessor(model_file=model_path).encode(PROBE_TEXT)
    ours = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    at = first_difference(ours, reference)
    if at is not None:
        raise TokenizerFilesError(
            f"the tokenizer converted from {uri}/tokenizer.model differs from SentencePiece on a probe text "
            f"at token {at} (ours {ours[at : at + 3]}, SentencePiece {reference[at : at + 3]}); "
            "add a tokenizer.json"
        )
