"""Skip tokens: visual tokens per image and forward time, with vs without (docs/model.md, "Skip tokens").

Run:  .venv/bin/python bench/skip_tokens.py [--images 48] [--batch 8] [--repeats 3] [--seed 0]

Prints one JSON object per line:
- {"kind": "category", ...}: tokens per image for each aspect-ratio category, 448 and 672 canvas;
- {"kind": "mix", ...}: the same averaged over the whole synthetic mix;
- {"kind": "timing", ...}: the `debug` flavor on this CPU, the same images, text and weights,
  with skip tokens and with `use_skip_token=False`, seconds of forward (no grad) and of
  forward + backward (min and median of interleaved repeats), batches grouped by length as the
  training sampler does; scenario "mix" (the mix below) and "wide" (only the categories that
  skip on the 2 x 2 grid: panoramas, receipts, mobile screenshots: the upper bound);
- {"kind": "ratio", ...}: no-skip / skip for tokens and times;
- {"kind": "estimate", ...}: what the token saving means for a real flavor, from `model info`
  FLOPs (vision forward per view + LLM training FLOPs per token), no execution.

Aspect-ratio mix (our assumption of a SPHINX-X-like training mix, W:H, weight):
documents 1:1.414 (A4 portrait pages, 0.25), charts 4:3 (0.15), desktop screenshots 16:9 (0.15),
mobile screenshots 9:19.5 (0.10), photos 3:2 (0.25), panoramas 3:1 (0.05), receipts 1:3 (0.05).
Each ratio is jittered by a factor exp(U(-0.1, 0.1)); the long side is uniform in 300..1200 px.
On the 2 x 2 grid only ratios >= 2:1 (panoramas, receipts, tall mobile screenshots) skip cells;
on the 3 x 3 grid ratios >= 1.5:1 skip a row or column.

The debug towers are tiny, so CPU time here is almost all decoder time; real towers add the
saved view encodings on top (see the estimate lines).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

CATEGORIES = (
    # name, width / height, weight
    ("document", 1 / 1.414, 0.25),
    ("chart", 4 / 3, 0.15),
    ("screenshot", 16 / 9, 0.15),
    ("mobile", 9 / 19.5, 0.10),
    ("photo", 3 / 2, 0.25),
    ("panorama", 3.0, 0.05),
    ("receipt", 1 / 3, 0.05),
)
TEXT_TOKENS = 64  # short conversation per sample; half of it answer


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def sample_sizes(num: int, gen: torch.Generator) -> list[tuple[str, int, int]]:
    weights = torch.tensor([w for _, _, w in CATEGORIES])
    picks = torch.multinomial(weights, num, replacement=True, generator=gen).tolist()
    sizes = []
    for i in picks:
        name, ratio, _ = CATEGORIES[i]
        ratio *= math.exp(float(torch.empty(1).uniform_(-0.1, 0.1, generator=gen)))
        long_side = int(torch.randint(300, 1201, (1,), generator=gen))
        width, height = (
            (long_side, round(long_side / ratio)) if ratio >= 1 else (round(long_side * ratio), long_side)
        )
        sizes.append((name, max(1, width), max(1, height)))
    return sizes


def token_report(sizes: list[tuple[str, int, int]]) -> None:
    from sphinxx.model.anyres import AnyResConfig, num_visual_tokens

    configs = {
        "448_skip": AnyResConfig(grid=2),
        "448_noskip": AnyResConfig(grid=2, use_skip_token=False),
        "672_skip": AnyResConfig(grid=3),
        "672_noskip": AnyResConfig(grid=3, use_skip_token=False),
    }
    for name, ratio, weight in CATEGORIES:
        w, h = (1000, round(1000 / ratio)) if ratio >= 1 else (round(1000 * ratio), 1000)
        emit({"kind": "category", "category": name, "aspect_w_over_h": round(ratio, 3), "weight": weight}
             | {f"tokens_{k}": num_visual_tokens(w, h, c) for k, c in configs.items()})  # fmt: skip
    mean = {k: statistics.mean(num_visual_tokens(w, h, c) for _, w, h in sizes) for k, c in configs.items()}
    emit({"kind": "mix", "images": len(sizes)} | {f"mean_tokens_{k}": round(v, 1) for k, v in mean.items()}
         | {"saving_448": round(1 - mean["448_skip"] / mean["448_noskip"], 4),
            "saving_672": round(1 - mean["672_skip"] / mean["672_noskip"], 4)})  # fmt: skip


def build_batches(sizes, config, batch: int, gen: torch.Generator):
    from sphinxx.model.anyres import process_image
    from sphinxx.model.sphinx import IGNORE_INDEX, SphinxSample, collate

    samples = []
    for _, w, h in sizes:
        image = torch.rand(3, h, w, generator=gen)
        tokens = torch.randint(1, 4096, (TEXT_TOKENS,), generator=gen)
        labels = torch.full((TEXT_TOKENS,), IGNORE_INDEX)
        labels[TEXT_TOKENS // 2 :] = tokens[TEXT_TOKENS // 2 :]
        samples.append(SphinxSample(tokens, labels, process_image(image, config)))
    # Length-grouped batches, as the training sampler forms them.
    samples.sort(key=lambda s: s.image.num_tokens)
    return [collate(samples[i : i + batch]) for i in range(0, len(samples), batch)]


def run_once(model, batches, train: bool) -> float:
    start = time.perf_counter()
    for b in batches:
        if train:
            model(b).loss.backward()
        else:
            with torch.no_grad():
                model(b)
    return time.perf_counter() - start


def timing_report(sizes, batch: int, repeats: int, seed: int, scenario: str) -> None:
    from sphinxx.model.flavors import build_sphinx

    torch.manual_seed(seed)
    models = {"skip": build_sphinx("debug"), "noskip": build_sphinx("debug", use_skip_token=False)}
    state = {k: v for k, v in models["skip"].state_dict().items() if k != "skip_token"}
    models["noskip"].load_state_dict(state)  # same weights; the skip model only adds its skip token
    batches = {
        name: build_batches(sizes, m.args.image, batch, torch.Generator().manual_seed(seed))
        for name, m in models.items()
    }
    times: dict[str, dict[str, list[float]]] = {n: {"forward": [], "forward_backward": []} for n in models}
    for name in models:
        run_once(models[name], batches[name], train=False)  # warm-up
    # Interleaved repeats, so load from other processes hits both modes alike; min is reported
    # as the least-disturbed run, median for reference.
    for _ in range(repeats):
        for name, model in models.items():
            times[name]["forward"].append(run_once(model, batches[name], train=False))
            times[name]["forward_backward"].append(run_once(model, batches[name], train=True))
            model.zero_grad(set_to_none=True)
    results = {}
    for name in models:
        bs = batches[name]
        results[name] = {
            "forward_min_s": round(min(times[name]["forward"]), 3),
            "forward_median_s": round(statistics.median(times[name]["forward"]), 3),
            "forward_backward_min_s": round(min(times[name]["forward_backward"]), 3),
            "forward_backward_median_s": round(statistics.median(times[name]["forward_backward"]), 3),
            "sequence_tokens": sum(sum(b.sequence_lengths()) for b in bs),
            "padded_tokens": sum(b.tokens.shape[0] * max(b.sequence_lengths()) for b in bs),
            "encoded_views": sum(b.dino_pixels.shape[0] for b in bs),
        }
        emit({"kind": "timing", "scenario": scenario, "flavor": "debug", "mode": name, "images": len(sizes),
              "batch": batch, "repeats": repeats, "threads": torch.get_num_threads()}
             | results[name])  # fmt: skip
    ratio = {k: round(results["noskip"][k] / results["skip"][k], 3) for k in results["skip"]}
    emit({"kind": "ratio", "scenario": scenario, "flavor": "debug", "noskip_over_skip": ratio})


def estimate_report(sizes, flavor: str = "tinyllama-1.1b") -> None:
    from sphinxx.model.anyres import AnyResConfig, image_slots, slot_tokens
    from sphinxx.model.info import model_info

    info = model_info(flavor)
    per_view, per_token = info["flops"]["vision_forward_per_view"], info["flops"]["llm_train_per_token"]
    grid = info["grid"]
    totals = {}
    for mode, config in (
        ("skip", AnyResConfig(grid=grid)),
        ("noskip", AnyResConfig(grid=grid, use_skip_token=False)),
    ):
        views = tokens = 0
        for _, w, h in sizes:
            slots = image_slots(w, h, config)
            views += sum(1 for s in slots if s == 1)
            tokens += slot_tokens(slots) + TEXT_TOKENS
        totals[mode] = views * per_view + tokens * per_token
    emit({"kind": "estimate", "flavor": flavor, "images": len(sizes),
          "train_flops_skip": totals["skip"], "train_flops_noskip": totals["noskip"],
          "noskip_over_skip": round(totals["noskip"] / totals["skip"], 3)})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared box)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = sample_sizes(args.images, torch.Generator().manual_seed(args.seed))
    token_report(sizes)
    timing_report(sizes, args.batch, args.repeats, args.seed, "mix")
    # Upper bound: only the categories that skip on the 2 x 2 grid.
    wide = [s for s in sample_sizes(8 * args.images, torch.Generator().manual_seed(args.seed + 1))
            if s[0] in ("panorama", "receipt", "mobile")][: args.batch * 2]  # fmt: skip
    timing_report(wide, args.batch, args.repeats, args.seed, "wide")
    for flavor in ("tinyllama-1.1b", "llama2-13b-2k"):
        estimate_report(sizes, flavor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
