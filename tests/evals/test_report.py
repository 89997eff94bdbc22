"""The committed entry of a benchmark (sphinxx/evals/report.py): its scale, MLflow names, the table."""

from __future__ import annotations

import pytest

from sphinxx.evals.metrics import Scores
from sphinxx.evals.report import entry, mlflow_metrics, mlflow_name, score_range, table


def test_the_score_is_the_headline_as_a_fraction_except_mme_on_its_own_scale() -> None:
    vqa = entry(Scores("vqa_accuracy", {"accuracy": 42.0}, {"a": 0.3, "b": 0.54}), step=10, tokens=4096)
    assert vqa == {"score": pytest.approx(0.42), "metric": "vqa_accuracy", "samples": 2, "step": 10,
                   "tokens": 4096, "details": {"accuracy": 42.0}}  # fmt: skip
    pope = entry(Scores("pope", {"f1": 80.0, "accuracy": 75.0}, {"a": 1.0}), step=1, tokens=1)
    assert pope["score"] == pytest.approx(0.8) and pope["details"] == {"f1": 80.0, "accuracy": 75.0}
    mme = entry(Scores("mme", {"perception": 1234.5, "cognition": 300.0}), step=1, tokens=1)
    assert mme["score"] == 1234.5 and score_range("mme") == (0.0, 2000.0)
    assert score_range("anls") == (0.0, 1.0)


def test_mlflow_names_keep_only_what_mlflow_accepts() -> None:
    assert mlflow_name("refcoco+") == "refcoco_plus" and mlflow_name("acc@0.5") == "acc_at_0.5"
    assert mlflow_name("a/b:c") == "a_b_c"
    entries = {"refcoco+": entry(Scores("box_iou_0.5", {"acc@0.5": 50.0}, {"x": 1.0}), 3, 9)}
    assert mlflow_metrics(entries) == {
        "benchmark/refcoco_plus": 0.5,
        "benchmark/refcoco_plus/acc_at_0.5": 50.0,
    }


def test_the_table_has_one_row_per_benchmark() -> None:
    entries = {
        "gqa": entry(Scores("exact_match", {"accuracy": 61.25}, {"a": 1.0}), 100, 1),
        "pope-random": entry(Scores("pope", {"f1": 85.0, "yes_ratio": 48.0}, {"a": 1.0, "b": 0.0}), 100, 1),
    }
    lines = table(entries).splitlines()
    assert lines[0].split()[:5] == ["benchmark", "metric", "score", "samples", "step"]
    assert lines[1].split()[:5] == ["gqa", "exact_match", "0.6125", "1", "100"]
    assert lines[2].endswith("f1 85.00, yes_ratio 48.00") and lines[2].split()[2] == "0.8500"
