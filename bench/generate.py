"""Generation with the KV cache vs recomputing the whole sequence at every step (docs/model.md, "Generation").

Run:  .venv/bin/python bench/generate.py [--flavors debug,debug-moe] [--new-tokens 128] [--image 896x448]
                                         [--batch 1] [--repeats 2]

For each flavor: a SphinxX of that flavor (random weights, the tiny `debug` towers) answers
`--batch` copies of one prompt, an image of `--image` pixels (on the 448 canvas: 2:1 keeps 3
views and skips 2 cells, 779 image positions; `none` for text only) and a 40-token question,
greedy, `--new-tokens` new tokens, no EOS (every step runs). Two modes on the same weights and
prompt, interleaved `--repeats` times (the best time of each is kept):

- "cached": one prefill over the prompt fills the KV cache, then one single-position decoder
  step per new token (`model/generate.py`, `use_cache=True`);
- "recompute": the baseline, the decoder re-run over the whole sequence at every step
  (`use_cache=False`).

Prints one JSON object per line: {"kind": "setting"}, {"kind": "timing"} per mode, and
{"kind": "ratio"} with `speedup` = recompute seconds / cached seconds and `same_tokens` (the two
modes must give the same tokens). Goal: speedup >= 5 at 128 new tokens on CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def build(flavor: str, seed: int):
    from sphinxx.model.flavors import build_sphinx

    torch.manual_seed(seed)
    model = build_sphinx(flavor).eval()
    with torch.no_grad():  # weights that make greedy choices clear-cut (no near-ties between modes)
        for p in model.llm.parameters():
            p.normal_(0.0, 0.1 if p.dim() > 1 else 1.0)
    return model


def prompts(model, image: str, batch: int, seed: int) -> list:
    from sphinxx.model.anyres import process_image
    from sphinxx.model.generate import Prompt

    gen = torch.Generator().manual_seed(seed)
    processed = None
    if image != "none":
        width, height = (int(x) for x in image.lower().split("x"))
        processed = process_image(torch.rand(3, height, width, generator=gen), model.args.image)
    text = [1, *torch.randint(3, model.args.llm.vocab_size, (40,), generator=gen).tolist()]
    return [Prompt(text, processed) for _ in range(batch)]


def timed(model, items: list, new_tokens: int, use_cache: bool) -> tuple[float, list[list[int]]]:
    from sphinxx.model.generate import GenerationConfig, generate

    config = GenerationConfig(max_new_tokens=new_tokens, use_cache=use_cache)
    start = time.perf_counter()
    out = generate(model, items, config)
    return time.perf_counter() - start, [r.tokens for r in out]


def run(flavor: str, args: argparse.Namespace) -> None:
    model = build(flavor, args.seed)
    items = prompts(model, args.image, args.batch, args.seed)
    image_positions = items[0].image.num_tokens if items[0].image is not None else 0
    emit({
        "kind": "setting", "flavor": flavor, "new_tokens": args.new_tokens, "batch": args.batch,
        "image": args.image, "prompt_positions": image_positions + len(items[0].tokens),
        "threads": torch.get_num_threads(),
    })  # fmt: skip
    best = {"cached": float("inf"), "recompute": float("inf")}
    tokens: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for mode in ("cached", "recompute"):
            seconds, tokens[mode] = timed(model, items, args.new_tokens, use_cache=mode == "cached")
            best[mode] = min(best[mode], seconds)
    for mode, seconds in best.items():
        new = args.new_tokens * args.batch
        emit({
            "kind": "timing", "flavor": flavor, "mode": mode, "seconds": round(seconds, 4),
            "new_tokens_per_s": round(new / seconds, 1),
        })  # fmt: skip
    emit({
        "kind": "ratio", "flavor": flavor, "baseline": "recompute", "new_tokens": args.new_tokens,
        "speedup": round(best["recompute"] / best["cached"], 2),
        "same_tokens": tokens["cached"] == tokens["recompute"],
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavors", default="debug,debug-moe", help="comma-separated flavors")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--image", default="896x448", help="WxH of the random image, or none")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for flavor in args.flavors.split(","):
        run(flavor.strip(), args)


if __name__ == "__main__":
    main()
