"""VQA accuracy as the VQA benchmark defines it (VQAv2, TextVQA).

The official evaluation (the VQA challenge's `vqaEval.py`, which LLaMA2-Accessory's `eval_mm` runs
unchanged) normalises answers with a handful of tables and then scores a prediction against the
ten human answers: for each of the ten subsets of nine annotators, min(#matches / 3, 1), averaged.
This module re-states its rules:

- punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches
  a space in the answer or the answer holds a digit-comma-digit, else replaced by a space; then
  a period not followed by a digit is deleted (at most 32 of them: the script passes
  `re.UNICODE`, which is 32, as `re.sub`'s count);
- digits and articles: lower case, number words "none"/"zero".."ten" become digits, "a", "an",
  "the" are dropped, and apostrophe-less contractions get their apostrophes ("dont" -> "don't");
- the prediction always goes through both steps (so "Two." scores against "2"); the human
  answers go through the punctuation step only, and only when they disagree: a unanimous set is
  compared as it is stored (the dataset's answers are already lower case, digits, no articles).
"""

from __future__ import annotations

import re

PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

# The contracted forms the official table restores. Each is reached from the spellings with
# exactly one apostrophe missing ("dont" -> "don't"; "couldnt've" and "couldn'tve" ->
# "couldn't've"). Forms whose apostrophe-less spelling is a word of its own ("we'd" / "wed",
# "it's" / "its", "we'll" / "well", "she'll" / "shell", ...) are not in the table, and neither
# are the capitalised "I" forms, which never match the lower-cased text they are looked up in.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't "
    "mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't "
    "she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll that's there'd "
    "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've "
    "we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
    "who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
    "y'all'd've you'd you'd've you'll you're you've"
).split()


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for form in _CONTRACTED:
        for i, char in enumerate(form):
            if char == "'":
                table[form[:i] + form[i + 1 :]] = form
    # The official table's one reversed entry: "somebody'd" is rewritten without its apostrophe.
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contraction_table()
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a lookahead for "<=", as in the official script
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_COUNT = 32  # `re.UNICODE` passed as the count of `sub` by the official script


def strip_punctuation(text: str) -> str:
    out = text
    touching_digits = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or touching_digits:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The official processing of a predicted answer: punctuation, then digits, articles, contractions."""
    return digits_and_articles(strip_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The VQA score of one prediction against the human answers (ten in VQAv2 and TextVQA), 0..1."""
    if not answers:
        raise ValueError("VQA accuracy needs the human answers; this question has none")
    given = normalize_answer(prediction.replace("\n", " ").replace("\t", " ").strip())
    truth = [strip_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    total = 0.0
    for left_out in range(len(truth)):
        others = truth[:left_out] + truth[left_out + 1 :]
        total += min(1.0, sum(1 for a in others if a == given) / 3.0)
    return total / len(truth)
