"""Per-answer scoring rules of the benchmarks other than VQA accuracy and boxes.

Each function scores one model answer against a question's references, as its benchmark's own
evaluation does (docs/evaluation.md, "Metrics", names the source of each rule):

- `exact_match` (GQA): equal after lower case, surrounding spaces and trailing periods removed;
- `anls` (DocVQA, InfoVQA): 1 - normalised Levenshtein distance, 0 at or above the threshold 0.5,
  the best over the references;
- `relaxed_match` (ChartQA): a number within 5% of a numeric reference, anything else exact;
- `pope_answer` (POPE): "no" if the first sentence holds the word "no", "not" or "No", else "yes";
- `mme_answer` (MME): "yes" / "no" / "other" from the answer's first four characters;
- `choice_letter` (ScienceQA, MMBench): the option letter an answer names, if it names one.
"""

from __future__ import annotations

import re


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction equals a reference (case, spaces and trailing periods aside)."""
    given = _plain(prediction)
    return 1.0 if any(_plain(a) == given for a in answers) else 0.0


def _plain(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one answer: the best over the references.

    Both strings are lower-cased with runs of spaces collapsed (the DocVQA evaluation); a
    normalised distance at or above `threshold` scores 0.
    """
    given = " ".join(prediction.strip().lower().split())
    best = 0.0
    for answer in answers:
        truth = " ".join(answer.strip().lower().split())
        length = max(len(truth), len(given))
        distance = levenshtein(truth, given) / length if length else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def _number(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_match(prediction: str, answers: list[str], tolerance: float = 0.05) -> float:
    """ChartQA's relaxed accuracy of one answer: the best over the references.

    A reference that reads as a non-zero number (a trailing "%" divides by 100) accepts a
    numeric answer within `tolerance` of it, relative to the reference; otherwise the answer
    must equal the reference, ignoring case (pix2struct's definition, which ChartQA uses).
    """
    given = prediction.strip()
    for answer in answers:
        truth = answer.strip()
        value, target = _number(given), _number(truth)
        if value is not None and target:
            if abs(value - target) / abs(target) <= tolerance:
                return 1.0
        elif given.lower() == truth.lower():
            return 1.0
    return 0.0


def pope_answer(prediction: str) -> str:
    """POPE's reading of a free-form answer: "no" when its first sentence says no or not."""
    text = prediction.split(".")[0] if "." in prediction else prediction
    words = text.replace(",", "").split(" ")
    return "no" if {"No", "not", "no"} & set(words) else "yes"


def mme_answer(prediction: str) -> str:
    """MME's reading of an answer: "yes", "no", or "other" when neither opens it."""
    text = prediction.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


_LEADING_LETTER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])(?:[.:,)]|$))")
_NAMED_LETTER = re.compile(r"\b(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\b", re.IGNORECASE)
_LONE_LETTER = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")


def choice_letter(prediction: str, choices: list[str]) -> str | None:
    """The option letter an answer names, or None when it names none or several.

    In order: a letter that opens the answer ("B", "(B)", "B. a cat", not "A or B"); a letter after "answer
    is" / "option"; the only capital letter standing alone among the options' letters; an
    answer that is one option's text. Anything else names no option and scores 0.
    """
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    text = prediction.strip()
    for pattern in (_LEADING_LETTER, _NAMED_LETTER):
        found = pattern.search(text)
        letter = next((g.upper() for g in found.groups() if g), None) if found else None
        if letter in letters:
            return letter
    alone = {m for m in _LONE_LETTER.findall(text) if m in letters}
    if len(alone) == 1:
        return alone.pop()
    plain = _plain(text)
    named = [letter for letter, choice in zip(letters, choices, strict=True) if _plain(choice) == plain]
    return named[0] if len(named) == 1 else None
