"""Scores of a benchmark: every record's answer scored by its metric, aggregated as published.

`score(records, predictions)` takes the records of one benchmark file and the model's answer per
record id, and returns `Scores`: the benchmark's numbers in percent (the headline first), each
record's own score (0..1, for the per-sample artifact) and what could not be scored. A scored
record without a prediction counts as answered wrong and is listed in `missing`; a record with
no reference (a test split) is counted in `unscored` and left out of every number.

Aggregates: the mean of per-record scores (VQA accuracy, exact match, ANLS, relaxed accuracy,
Acc@0.5, multiple choice); POPE's confusion-matrix numbers; MME's acc + acc+ per category,
summed into perception and cognition; MMBench's circular accuracy (a question counts only when
every circular shift of its options is answered right).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .answers import anls, choice_letter, exact_match, mme_answer, pope_answer, relaxed_match
from .boxes import box_hit
from .task import TaskRecord
from .vqa import vqa_accuracy

MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


@dataclass(frozen=True)
class Scores:
    """A benchmark's numbers (percent; the first is the headline) and what stood behind them."""

    metric: str
    values: dict[str, float]
    per_record: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unscored: int = 0

    @property
    def headline(self) -> tuple[str, float]:
        name = next(iter(self.values))
        return name, self.values[name]


def _box(record: TaskRecord, answer: str) -> float:
    assert record.box is not None and record.image_size is not None  # `scored` and the record's check
    return box_hit(answer, record.box, record.image_size)


def _choice(record: TaskRecord, answer: str) -> float:
    return 1.0 if choice_letter(answer, record.choices) == record.answers[0] else 0.0


def _pope(record: TaskRecord, answer: str) -> float:
    return 1.0 if pope_answer(answer) == record.answers[0].strip().lower() else 0.0


def _mme(record: TaskRecord, answer: str) -> float:
    return 1.0 if mme_answer(answer) == record.answers[0].strip().lower() else 0.0


PER_RECORD: dict[str, Callable[[TaskRecord, str], float]] = {
    "vqa_accuracy": lambda r, a: vqa_accuracy(a, r.answers),
    "exact_match": lambda r, a: exact_match(a, r.answers),
    "anls": lambda r, a: anls(a, r.answers),
    "relaxed_accuracy": lambda r, a: relaxed_match(a, r.answers),
    "box_iou_0.5": _box,
    "pope": _pope,
    "mme": _mme,
    "multiple_choice": _choice,
    "circular_choice": _choice,
}
_HEADLINE = {
    "vqa_accuracy": "accuracy",
    "exact_match": "accuracy",
    "anls": "anls",
    "relaxed_accuracy": "relaxed_accuracy",
    "box_iou_0.5": "acc@0.5",
    "multiple_choice": "accuracy",
}


def score(records: list[TaskRecord], predictions: Mapping[str, str]) -> Scores:
    """Score one benchmark's records (one metric) against the answers keyed by record id."""
    metrics = {r.metric for r in records}
    if len(metrics) != 1:
        raise ValueError(f"score one metric at a time; these records have {sorted(metrics) or 'none'}")
    metric = metrics.pop()
    scored = [r for r in records if r.scored]
    missing = [r.id for r in scored if r.id not in predictions]
    per_record = {r.id: PER_RECORD[metric](r, predictions.get(r.id, "")) for r in scored}
    if metric == "pope":
        values = pope_values(scored, predictions)
    elif metric == "mme":
        values = mme_values(scored, per_record)
    elif metric == "circular_choice":
        values = circular_values(scored, per_record)
    else:
        values = {_HEADLINE[metric]: _percent(sum(per_record.values()), len(per_record))}
    return Scores(metric, values, per_record, missing, unscored=len(records) - len(scored))


def _percent(part: float, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def pope_values(records: list[TaskRecord], predictions: Mapping[str, str]) -> dict[str, float]:
    """POPE's numbers with "yes" as the positive class: F1 (headline), accuracy, precision,
    recall and the share of "yes" answers."""
    pairs = [(pope_answer(predictions.get(r.id, "")), r.answers[0].strip().lower()) for r in records]
    tp = sum(1 for p, t in pairs if p == "yes" and t == "yes")
    fp = sum(1 for p, t in pairs if p == "yes" and t != "yes")
    fn = sum(1 for p, t in pairs if p != "yes" and t == "yes")
    tn = len(pairs) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "f1": 100.0 * f1,
        "accuracy": _percent(tp + tn, len(pairs)),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "yes_ratio": _percent(tp + fp, len(pairs)),
    }


def _groups(records: list[TaskRecord], per_record: Mapping[str, float]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r in records:
        groups[r.group or r.id].append(per_record[r.id])
    return groups


def mme_values(records: list[TaskRecord], per_record: Mapping[str, float]) -> dict[str, float]:
    """MME: per category acc (questions right) + acc+ (images with both questions right), in
    percent; perception (headline) and cognition are the sums of their categories' scores."""
    by_category: dict[str, list[TaskRecord]] = defaultdict(list)
    for r in records:
        by_category[r.category].append(r)
    values: dict[str, float] = {"perception": 0.0, "cognition": 0.0}
    for category, members in sorted(by_category.items()):
        acc = _percent(sum(per_record[r.id] for r in members), len(members))
        groups = _groups(members, per_record)
        acc_plus = _percent(sum(1 for g in groups.values() if all(s == 1.0 for s in g)), len(groups))
        values[category] = acc + acc_plus
        if category in MME_PERCEPTION:
            values["perception"] += acc + acc_plus
        elif category in MME_COGNITION:
            values["cognition"] += acc + acc_plus
    return values


def circular_values(records: list[TaskRecord], per_record: Mapping[str, float]) -> dict[str, float]:
    """MMBench's circular evaluation: a question (a `group` of circular shifts) counts only when
    every shift is answered right; also the plain accuracy over all shifts."""
    groups = _groups(records, per_record)
    right = sum(1 for scores in groups.values() if all(s == 1.0 for s in scores))
    return {
        "circular_accuracy": _percent(right, len(groups)),
        "accuracy": _percent(sum(per_record.values()), len(per_record)),
    }
