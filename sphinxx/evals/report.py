"""A benchmark's result as the run records it: the committed entry, its MLflow names, the table.

The job commits one entry per benchmark with every checkpoint after an evaluation, under the
manifest metric `benchmarks` (docs/training.md, "Benchmarks in every point"):

    {"<name>": {"score": 0.42, "metric": "vqa_accuracy", "samples": 200, "step": 1000,
                "tokens": 81920000, "details": {"accuracy": 42.0}}}

`score` is the benchmark's headline number as a fraction in [0, 1] (the percentages `score()`
publishes divided by 100), except MME, whose headline (perception, a sum of per-category
acc + acc+) stays on its own scale, 0 to 2000 (`score_range`). `details` holds every number
`metrics.score` publishes, as published (percent). `samples` counts the records scored.
Pure: the job, `sphinxx eval score` and the sweep read these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .metrics import MME_PERCEPTION, Scores

OWN_SCALE = {"mme": (0.0, 200.0 * len(MME_PERCEPTION))}  # metric -> (low, high) where not [0, 1]
_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. ]")


def score_range(metric: str) -> tuple[float, float]:
    """The range of an entry's `score` for a metric: [0, 1], or the benchmark's own (MME: 0..2000)."""
    return OWN_SCALE.get(metric, (0.0, 1.0))


def headline_score(scores: Scores) -> float:
    """The headline as the entry's `score` (module docstring)."""
    _, value = scores.headline
    return float(value) if scores.metric in OWN_SCALE else float(value) / 100.0


def entry(scores: Scores, step: int, tokens: int) -> dict[str, Any]:
    """The committed entry of one benchmark scored at `step` after `tokens` training tokens."""
    return {
        "score": headline_score(scores),
        "metric": scores.metric,
        "samples": len(scores.per_record),
        "step": int(step),
        "tokens": int(tokens),
        "details": {k: float(v) for k, v in scores.values.items()},
    }


def mlflow_name(name: str) -> str:
    """`name` as one part of an MLflow metric key or an artifact name: what MLflow refuses and "/"
    replaced ("refcoco+" -> "refcoco_plus", "acc@0.5" -> "acc_at_0.5")."""
    return _MLFLOW_UNSAFE.sub("_", name.replace("+", "_plus").replace("@", "_at_"))


def mlflow_metrics(entries: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The MLflow metrics of entries: `benchmark/<name>` (the score) and `benchmark/<name>/<detail>`."""
    out: dict[str, float] = {}
    for name, item in entries.items():
        key = f"benchmark/{mlflow_name(name)}"
        out[key] = float(item["score"])
        for detail, value in dict(item.get("details", {})).items():
            out[f"{key}/{mlflow_name(detail)}"] = float(value)
    return out


def table(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """The entries as a text table: benchmark, metric, score, samples, step and the published numbers."""
    header = ("benchmark", "metric", "score", "samples", "step", "numbers (as published)")
    rows = [header]
    for name, item in entries.items():
        numbers = ", ".join(f"{k} {float(v):.2f}" for k, v in dict(item.get("details", {})).items())
        rows.append(
            (name, str(item["metric"]), f"{float(item['score']):.4f}", str(item["samples"]),
             str(item["step"]), numbers)
        )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows
    )
