"""sphinxx.evals: benchmarks as data, and their metrics exactly as the benchmarks define them.

Pure Python, no torch, numpy or storage client (an import-linter contract), so the training job,
the local runner and the operator can all read tasks and compute or show scores:

    task.py       `TaskRecord`, one benchmark question as a JSONL line; the metric names
    prompts.py    the evaluation prompts (LLaMA2-Accessory's short-answer, multiple-choice, REC)
    vqa.py        VQA accuracy with the official answer normalisation
    answers.py    exact match, ANLS, relaxed accuracy, POPE's and MME's yes/no, option letters
    boxes.py      boxes in answer text, IoU, Acc@0.5
    metrics.py    `score(records, predictions)`: a benchmark's numbers as it publishes them
    formats/      the importers of `sphinxx eval import` (official layouts -> task records)

The layer sits between the vocabulary (`sphinxx.schema`, which it imports) and the parts; the
command that reads and writes files (`sphinxx eval import`) lives in the job (`jobs/eval_import.py`).
Design: docs/evaluation.md.
"""
