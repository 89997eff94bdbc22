"""The evaluation prompts of SPHINX-X (LLaMA2-Accessory's `eval_mm`), one builder per kind of task.

- short answer (VQAv2, GQA, TextVQA, DocVQA, ChartQA, POPE, MME): the question, a new line and
  "Answer the question using a single word or phrase.";
- multiple choice (MMBench, ScienceQA-IMG): the hint or context, the question, one "A. option"
  line per option and "Answer with the option's letter from the given choices directly." (the
  LLaVA-1.5 layout); ScienceQA's answer starts with "The answer is", as LLaMA2-Accessory pre-fills;
- referring expression (RefCOCO family): "Please provide the bounding box coordinate of the
  region this sentence describes: {expression}." and the answer is a box (boxes.py).
"""

from __future__ import annotations

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
REFERRING = "Please provide the bounding box coordinate of the region this sentence describes: {}."
SCIENCEQA_ANSWER_PREFIX = "The answer is"


def short_answer(question: str) -> str:
    return f"{question.strip()}\n{SHORT_ANSWER}"


def multiple_choice(question: str, choices: list[str], context: str = "") -> str:
    lines = [context.strip()] if context.strip() else []
    lines.append(question.strip())
    lines += [f"{chr(ord('A') + i)}. {choice.strip()}" for i, choice in enumerate(choices)]
    lines.append(MULTIPLE_CHOICE)
    return "\n".join(lines)


def referring(expression: str) -> str:
    return REFERRING.format(expression.strip().rstrip("."))
