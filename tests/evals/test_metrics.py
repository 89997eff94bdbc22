"""Every metric on hand-checked cases taken from its benchmark's own definition."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinxx.evals.answers import (
    anls,
    choice_letter,
    exact_match,
    levenshtein,
    mme_answer,
    pope_answer,
    relaxed_match,
)
from sphinxx.evals.boxes import box_hit, format_box, iou, parse_box
from sphinxx.evals.metrics import score
from sphinxx.evals.task import TaskRecord
from sphinxx.evals.vqa import normalize_answer, vqa_accuracy

# ------------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize(
    ("matches", "expected"),
    # Of ten answers, k equal the prediction: leaving out a matching annotator leaves k - 1 matches
    # (k of the ten subsets), leaving out another leaves k (10 - k subsets); each min(n / 3, 1).
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_averages_the_ten_nine_annotator_subsets(matches: int, expected: float) -> None:
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        ("two", ["2"] * 10, 1.0),  # number words become digits
        ("Two.", ["2"] * 10, 1.0),  # case and the trailing period go
        ("The dog", ["dog"] * 3 + ["cat"] * 7, 0.9),  # articles go
        ("dont", ["don't"] * 3 + ["no"] * 7, 0.9),  # contractions get their apostrophe
        ("hot-dog", ["hot dog"] * 10, 1.0),  # a hyphen inside a word becomes a space
        ("yes!", ["yes"] * 10, 1.0),
        ("3.5", ["3.5"] * 10, 1.0),  # a period before a digit stays
        ("35", ["3.5"] * 10, 0.0),
        ("1,000", ["1000"] * 4 + ["100"] * 6, 1.0),
        ("red", ["blue"] * 10, 0.0),
    ],
)
def test_vqa_accuracy_normalises_as_the_official_script(
    prediction: str, answers: list[str], expected: float
) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_human_answers_get_the_punctuation_step_only_and_only_when_they_disagree() -> None:
    """The official script leaves a unanimous set as stored and never lower-cases human answers."""
    assert vqa_accuracy("hot-dog", ["hot-dog"] * 9 + ["hotdog"]) == pytest.approx(1.0)  # both "hot dog"
    assert vqa_accuracy("hot-dog", ["hot-dog"] * 10) == 0.0  # the prediction becomes "hot dog", the set stays
    assert vqa_accuracy("dog", ["Dog"] * 9 + ["dogs"]) == 0.0  # punctuation only: "Dog" keeps its case
    assert vqa_accuracy("two", ["two"] * 10) == 0.0  # the prediction reads "2"; the unanimous set "two"


def test_normalisation_tables() -> None:
    assert normalize_answer("A man's hat.") == "man's hat"
    assert normalize_answer("none of the three") == "0 of 3"
    assert normalize_answer("whats (that)") == "what's that"
    assert normalize_answer("couldnt've") == "couldn't've"
    assert normalize_answer("somebody'd") == "somebodyd"  # the official table's one reversed entry
    assert normalize_answer("well") == "well"  # not "we'll": the table leaves real words alone
    assert normalize_answer("Yes, it is.") == "yes it is"
    assert normalize_answer("3.5 m.") == "3.5 m"
    with pytest.raises(ValueError, match="human answers"):
        vqa_accuracy("x", [])


# ----------------------------------------------------------------- exact match, ANLS, relaxed


def test_exact_match_gqa() -> None:
    assert exact_match("Yes.", ["yes"]) == 1.0
    assert exact_match(" Left ", ["left"]) == 1.0
    assert exact_match("the dog", ["dog"]) == 0.0  # no article rules in GQA
    assert exact_match("", ["dog"]) == 0.0


@cache
def _edits(a: str, b: str) -> int:
    """The textbook recursive definition of the edit distance (an independent reference)."""
    if not a or not b:
        return len(a) + len(b)
    return min(_edits(a[1:], b) + 1, _edits(a, b[1:]) + 1, _edits(a[1:], b[1:]) + (a[0] != b[0]))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abc ", max_size=7), st.text(alphabet="abc ", max_size=7))
def test_levenshtein_is_the_edit_distance(a: str, b: str) -> None:
    assert levenshtein(a, b) == levenshtein(b, a) == _edits(a, b)


def test_anls_threshold_and_best_reference() -> None:
    assert levenshtein("kitten", "sitting") == 3
    assert anls("helo", ["hello"]) == pytest.approx(0.8)  # one edit over five characters
    assert anls("abc", ["abcdef"]) == 0.0  # distance 3/6 = 0.5 is not below the threshold
    assert anls("abcd", ["abcdef"]) == pytest.approx(1 - 2 / 6)
    assert anls(" Hello   World ", ["hello world"]) == 1.0
    assert anls("helo", ["xyz", "hello"]) == pytest.approx(0.8)
    assert anls("", ["a"]) == 0.0


def test_relaxed_accuracy_chartqa() -> None:
    assert relaxed_match("10.4", ["10"]) == 1.0  # 4%
    assert relaxed_match("10.6", ["10"]) == 0.0  # 6%
    assert relaxed_match("95.2", ["100"]) == 1.0  # 4.8% of the reference
    assert relaxed_match("100", ["95.2"]) == 0.0  # 5.04% of the reference: relative to the reference
    assert relaxed_match("12%", ["0.12"]) == 1.0  # a percentage reads as a fraction
    assert relaxed_match("0", ["0"]) == 1.0  # a zero reference is compared as text ...
    assert relaxed_match("0.0", ["0"]) == 0.0  # ... so "0.0" is not "0" (pix2struct's rule)
    assert relaxed_match("Yes", ["yes"]) == 1.0
    assert relaxed_match("nine", ["9"]) == 0.0


# ------------------------------------------------------------------------------ boxes (REC)


def test_boxes_are_parsed_in_any_corner_order() -> None:
    box = (0.12, 0.30, 0.58, 0.91)
    assert parse_box("[0.12, 0.30, 0.58, 0.91]") == box
    assert parse_box("It is at [0.58, 0.91, 0.12, 0.30].") == box  # [x2, y2, x1, y1]
    assert parse_box("[0.12,0.91,0.58,0.30]") == box  # [x1, y2, x2, y1]
    assert parse_box("(0.12, 0.3, 0.58, 0.91)") == box
    assert parse_box("[1, 0, .5, 0.25]") == (0.5, 0.0, 1.0, 0.25)


@pytest.mark.parametrize(
    "text",
    ["the dog on the left", "[0.1, 0.2, 0.3]", "[0.1, 0.2, 1.5, 0.9]", "[0.2, 0.2, 0.2, 0.9]", ""],
)
def test_an_answer_without_a_usable_box_has_none_and_scores_zero(text: str) -> None:
    assert parse_box(text) is None
    assert box_hit(text, [0, 0, 100, 100], [100, 100]) == 0.0


def test_box_hit_is_iou_at_least_half_over_the_long_side() -> None:
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    # A 200 x 100 image: coordinates are fractions of the long side, 200.
    assert format_box([20, 10, 100, 60], [200, 100]) == "[0.10, 0.05, 0.50, 0.30]"
    assert box_hit("[0.10, 0.05, 0.50, 0.30]", [20, 10, 100, 60], [200, 100]) == 1.0
    assert box_hit("[0.50, 0.30, 0.10, 0.05]", [20, 10, 100, 60], [200, 100]) == 1.0
    assert box_hit("[0.10, 0.10, 0.50, 0.60]", [20, 10, 100, 60], [200, 100]) == 0.0  # normalised by height
    assert box_hit("[0, 0, 0.5, 1.0]", [0, 0, 100, 100], [100, 100]) == 1.0  # IoU exactly 0.5 counts
    assert box_hit("[0, 0, 0.49, 1.0]", [0, 0, 100, 100], [100, 100]) == 0.0


# ------------------------------------------------------------------------------ POPE, MME


def test_pope_reads_the_first_sentence_for_no_or_not() -> None:
    assert pope_answer("No, there is no dog.") == "no"
    assert pope_answer("There is not a dog in the image.") == "no"
    assert pope_answer("Yes, there is a dog.") == "yes"
    assert pope_answer("Yes. There is no cat.") == "yes"  # only the first sentence counts
    assert pope_answer("NO") == "yes"  # POPE's words are "No", "no" and "not", case as written


def _yes_no(metric: str, rid: str, truth: str, category: str = "", group: str = "") -> TaskRecord:
    return TaskRecord(
        id=rid,
        task=metric,
        split="test",
        images=["file:///i.jpg"],
        question="q?",
        prompt="q?",
        metric=metric,
        answers=[truth],
        category=category,
        group=group,
    )


def test_pope_scores_with_yes_as_the_positive_class() -> None:
    records = [_yes_no("pope", str(i), t) for i, t in enumerate(["yes", "yes", "yes", "no"])]
    result = score(records, {"0": "Yes", "1": "yes.", "2": "No.", "3": "Yes"})
    # TP = 2, FN = 1, FP = 1, TN = 0
    assert result.headline == ("f1", pytest.approx(200 / 3))
    assert result.values["accuracy"] == pytest.approx(50.0)
    assert result.values["precision"] == pytest.approx(200 / 3)
    assert result.values["recall"] == pytest.approx(200 / 3)
    assert result.values["yes_ratio"] == pytest.approx(75.0)


def test_mme_answer_reads_the_first_four_characters() -> None:
    assert mme_answer("Yes") == "yes"
    assert mme_answer("Yes, it is.") == "yes"
    assert mme_answer("No.") == "no"
    assert mme_answer("Nope") == "no"
    assert mme_answer("The answer is yes") == "other"


def test_mme_scores_acc_plus_acc_plus_per_category_summed() -> None:
    records = [
        _yes_no("mme", "e1a", "Yes", "existence", "existence/1.jpg"),
        _yes_no("mme", "e1b", "No", "existence", "existence/1.jpg"),
        _yes_no("mme", "e2a", "Yes", "existence", "existence/2.jpg"),
        _yes_no("mme", "e2b", "No", "existence", "existence/2.jpg"),
        _yes_no("mme", "c1a", "Yes", "code_reasoning", "code_reasoning/1.png"),
        _yes_no("mme", "c1b", "No", "code_reasoning", "code_reasoning/1.png"),
        _yes_no("mme", "k1a", "Yes", "count", "count/1.jpg"),
        _yes_no("mme", "k1b", "No", "count", "count/1.jpg"),
    ]
    answers = {"e1a": "Yes", "e1b": "No", "e2a": "Yes", "e2b": "Yes", "c1a": "Yes", "c1b": "No"}
    answers |= {"k1a": "I cannot tell", "k1b": "No"}
    result = score(records, answers)
    assert result.values["existence"] == pytest.approx(75.0 + 50.0)  # 3 of 4 questions, 1 of 2 images
    assert result.values["count"] == pytest.approx(50.0 + 0.0)  # "other" is wrong
    assert result.values["code_reasoning"] == pytest.approx(200.0)
    assert result.headline == ("perception", pytest.approx(175.0))
    assert result.values["cognition"] == pytest.approx(200.0)


# ------------------------------------------------------------------------ multiple choice


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B. a cat", "B"),
        ("The answer is C.", "C"),
        ("Answer: D", "D"),
        ("I pick D here", "D"),
        ("a dog", "A"),  # the text of option A
        ("A or B", None),  # two letters name no single option
        ("E", None),  # not an option
        ("I don't know", None),
    ],
)
def test_choice_letter(text: str, letter: str | None) -> None:
    assert choice_letter(text, ["a dog", "a cat", "a cow", "a hen"]) == letter


def _choice(rid: str, group: str, answer: str) -> TaskRecord:
    return TaskRecord(
        id=rid,
        task="mmbench",
        split="dev",
        images=["file:///i.png"],
        question="q?",
        prompt="q?",
        metric="circular_choice",
        answers=[answer],
        choices=["w", "x", "y", "z"],
        group=group,
    )


def test_circular_evaluation_counts_a_question_only_when_every_shift_is_right() -> None:
    # Question 1's right option is at B, A, D, C in its four shifts; question 2's at C, B, A, D.
    records = [_choice(f"1-{k}", "1", a) for k, a in enumerate("BADC")]
    records += [_choice(f"2-{k}", "2", a) for k, a in enumerate("CBAD")]
    answers = {f"1-{k}": a for k, a in enumerate("BADC")} | {"2-0": "C", "2-1": "B", "2-2": "A", "2-3": "A"}
    result = score(records, answers)
    assert result.values == {"circular_accuracy": 50.0, "accuracy": 87.5}
    always_a = score(records, {r.id: "A" for r in records})  # right once per question
    assert always_a.values == {"circular_accuracy": 0.0, "accuracy": 25.0}


# ---------------------------------------------------------------------------------- score


def test_score_counts_missing_answers_wrong_and_leaves_unscored_records_out() -> None:
    def vqa(rid: str, answers: list[str]) -> TaskRecord:
        return TaskRecord(
            id=rid,
            task="vqav2",
            split="val2014",
            images=["file:///i.jpg"],
            question="q?",
            prompt="q?",
            metric="vqa_accuracy",
            answers=answers,
        )

    records = [vqa("a", ["2"] * 10), vqa("b", ["red"] * 10), vqa("c", [])]
    result = score(records, {"a": "two"})
    assert result.headline == ("accuracy", 50.0)
    assert result.missing == ["b"] and result.unscored == 1
    assert result.per_record == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="one metric at a time"):
        score([*records, _choice("m", "m", "A")], {})
