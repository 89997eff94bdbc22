"""sphinxx.sweep: the sweep core, torch-free, the same on a cluster and on a laptop.

The operator (`sphinxx.operator`) and the local runner (`sphinxx sweep run --local`) both call
it, so one sweep file gives the same points, runs, tags and fit wherever it runs:

    points.py       expansion, point names and order, each point's TrainingRun spec, admit_sweep
    mlflow_runs.py  the MLflow parent/child protocol: experiment, names, tags, find-or-create, states
    results.py      the fit's inputs (N, D, L from each point's checkpoint) and the law's status form
    scaling_law.py  the fit itself (numpy + scipy, imported only when a sweep is fitted)
    abilities.py    every benchmark's score per point (the table both CLIs print) and its trend's status
    ability_law.py  the trend itself: a logistic in log10 C with bootstrap bands (numpy + scipy, as above)
    plots.py        the loss figure and one figure per benchmark (matplotlib, when drawn)

It imports the vocabulary (`sphinxx.schema`) and nothing of the model, storage, the training side or the
operator (import-linter contracts in pyproject.toml).
"""
