"""sphinxx.schema: the project's one vocabulary, torch-free.

Every typed spec at a boundary is declared here with one field model (`fields.py`), and every
consumer reads it from here: the job and the local runner (the run config), the operator (the
custom resources, their status, admission) and the CRDs and JSON schemas generated from them
(`openapi.py`). Nothing here imports torch, Ray, Kubernetes or any other layer of the project;
import-linter keeps it so (docs/architecture.md, "Layers").

    fields.py       the field model: declare, parse, check, dump (SchemaError names the path)
    documents.py    the one reader of users' YAML and JSON: bounded size, aliases and depth, no duplicate keys
    openapi.py      JSON Schema and structural CRD schemas from the same declarations
    decoder.py      ModelArgs: the decoder's shape and its rules
    flavors.py      the flavor table: every named model, its shape and exact parameter counts
    run.py          the run config (omegaconf-layered) and its cross-field rules
    resources.py    TrainingRun and ScalingSweep specs
    manifests.py    which documents of a file are ours: apiVersion and kind as the CRDs serve them
    status.py       their status: phases, conditions, typed rows
    credentials.py  credentials are refused anywhere in a spec
    uris.py         the URI rule of every `uri=` field: no `..`, `.` or empty segments, no backslash
    admission.py    a TrainingRun admitted with the job's own checks
"""
