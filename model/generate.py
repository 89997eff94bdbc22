"""Generation: prompts (with or without an image) -> answer tokens (docs/model.md, "Generation").

The loop is the usual one of decoder-only LMs. The prompts of a batch are assembled as in
training (`SphinxX.assemble`: [BOS] [image block] [text]) and left-padded, so every row's next
token lands in the last column; one forward over the whole prompt fills the KV cache
("prefill"), then each step embeds the tokens just chosen and runs the decoder on that one
column, attending over the cache. Positions come from the padding mask, so a row sees exactly
the contiguous positions 0..n-1 it trained on, whatever the other rows' lengths.

`use_cache=False` recomputes the whole sequence at every step instead: the reference the cache is
tested against (same tokens) and the baseline of `bench/generate.py`.

A row stops at one of `eos_ids` (the EOS is not part of the answer), at a stop string in its
decoded text (the text is cut there; needs `decode`), or after `max_new_tokens`. The batch runs
until every row has stopped. `keep_going` lets ranks that share expert-parallel MoE layers step
in lockstep: each forward is a collective there, so a rank whose rows are all done keeps running
(and discarding) steps while any other rank still generates; it is handed "do I still have an
active row" and returns "does any rank".

Pure torch on one device: no tokenizer (`decode` is a callable), no files, no process groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sphinxx.model.anyres import ProcessedImage
from sphinxx.model.llm import Transformer
from sphinxx.model.sampling.next_token import next_token
from sphinxx.model.sampling.stop import find_stop
from sphinxx.model.sphinx import IGNORE_INDEX, SphinxSample, SphinxX, collate

FINISH_EOS, FINISH_STOP, FINISH_LENGTH = "eos", "stop", "length"


@dataclass(frozen=True)
class GenerationConfig:
    """How to choose tokens and when to stop. temperature 0 is greedy (top_p and seed unused)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    eos_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop_strings):
            raise ValueError("a stop string must not be empty")


@dataclass
class Generated:
    """One row's answer: the generated ids (without the EOS that ended it), why it ended, and
    the decoded text cut before its stop string (None when no `decode` was given)."""

    tokens: list[int] = field(default_factory=list)
    finish: str = FINISH_LENGTH
    text: str | None = None
    done: bool = False


@dataclass(frozen=True)
class Prompt:
    """One request as token ids ([BOS] + the templated text) and its processed image, if any."""

    tokens: Sequence[int]
    image: ProcessedImage | None = None


def left_pad(h: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded h [B, W, D] with real `lengths` -> (left-padded h, attention mask [B, W] bool)."""
    bsz, width, _ = h.shape
    shift = width - torch.tensor(list(lengths), device=h.device)  # [B]
    columns = torch.arange(width, device=h.device)[None, :]  # [1, W]
    mask = columns >= shift[:, None]
    source = (columns - shift[:, None]).clamp_min(0)  # column c reads right-padded column c - shift
    gathered = h.gather(1, source[:, :, None].expand(bsz, width, h.shape[2]))
    return gathered.masked_fill(~mask[:, :, None], 0.0), mask


def generate_from_embeddings(
    llm: Transformer,
    h: torch.Tensor,
    lengths: Sequence[int],
    config: GenerationConfig,
    decode: Callable[[list[int]], str] | None = None,
    keep_going: Callable[[bool], bool] | None = None,
) -> list[Generated]:
    """Answers for prompt embeddings h [B, W, D], right-padded, row b of real length lengths[b]."""
    if config.stop_strings and decode is None:
        raise ValueError("stop strings need a decode function (token ids -> text)")
    h, mask = left_pad(h, lengths)
    bsz, width, _ = h.shape
    generator = None
    if config.temperature > 0 and config.seed is not None:
        generator = torch.Generator(device=h.device).manual_seed(config.seed)
    cache = llm.new_cache(bsz, width + config.max_new_tokens, dtype=h.dtype) if config.use_cache else None
    rows = [Generated() for _ in range(bsz)]
    step_input = h
    for step in range(config.max_new_tokens):
        hidden, _ = llm.forward_hidden(step_input, attention_mask=mask, cache=cache)
        logits = llm.output(hidden[:, -1]).float()  # [B, V]: the next token of every row
        chosen = next_token(logits, config.temperature, config.top_p, generator)
        for row, token in zip(rows, chosen.tolist(), strict=True):
            if not row.done:
                _append(row, token, config, decode)
        active = not all(row.done for row in rows)
        if keep_going is not None:
            active = keep_going(active)
        if not active or step == config.max_new_tokens - 1:
            break
        new = llm.embed(chosen[:, None]).to(h.dtype)  # [B, 1, D]; finished rows run on, discarded
        mask = torch.cat([mask, mask.new_ones(bsz, 1)], dim=1)
        step_input = new if cache is not None else torch.cat([step_input, new], dim=1)
    for row in rows:
        if decode is not None and row.text is None:
            row.text = decode(row.tokens)
        row.done = True
    return rows


def _append(
    row: Generated, token: int, config: GenerationConfig, decode: Callable[[list[int]], str] | None
) -> None:
    """Add one chosen token to an active row and decide whether the row stops."""
    if token in config.eos_ids:
        row.finish, row.done = FINISH_EOS, True
        return
    row.tokens.append(token)
    if config.stop_strings and decode is not None:
        text = decode(row.tokens)
        at = find_stop(text, config.stop_strings)
        if at is not None:
            row.finish, row.done, row.text = FINISH_STOP, True, text[:at]
            return
    if len(row.tokens) >= config.max_new_tokens:
        row.finish, row.done = FINISH_LENGTH, True


@torch.no_grad()
def generate_text(
    llm: Transformer,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    decode: Callable[[list[int]], str] | None = None,
    keep_going: Callable[[bool], bool] | None = None,
) -> list[Generated]:
    """Answers of the text-only decoder for token-id prompts of any lengths (one batch)."""
    if not prompts or any(len(p) < 1 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    device = llm.tok_embeddings.weight.device
    tokens = torch.tensor([list(p) + [0] * (width - len(p)) for p in prompts], device=device)
    return generate_from_embeddings(llm, llm.embed(tokens), lengths, config, decode, keep_going)


@torch.no_grad()
def generate(
    model: SphinxX,
    prompts: Sequence[Prompt],
    config: GenerationConfig,
    decode: Callable[[list[int]], str] | None = None,
    keep_going: Callable[[bool], bool] | None = None,
) -> list[Generated]:
    """Answers of the multimodal model: each prompt's image block after its BOS, as in training."""
    if not prompts or any(len(p.tokens) < 1 for p in prompts):
        raise ValueError("every prompt needs at least one token (BOS)")
    samples = [SphinxSample(list(p.tokens), [IGNORE_INDEX] * len(p.tokens), p.image) for p in prompts]
    device = model.llm.tok_embeddings.weight.device
    batch = collate(samples, image=model.args.image).to(device)
    h, _, lengths, _ = model.assemble(batch)
    return generate_from_embeddings(model.llm, h, lengths, config, decode, keep_going)
