"""sphinxx: scaling sweeps of the SPHINX-X multimodal LLM family on Kubernetes.

The root package holds the layer everything else stands on and the front door:

    schema/   the vocabulary: the field model, the run config and presets, the flavor table,
              the custom resources and their status, admission (imports nothing of the project)
    sweep/    the sweep core: points, the MLflow protocol, the scaling-law fit (imports the schema)
    cli.py    the `sphinxx` command: reaches each command group by module name, imports none

The other layers live in their own top-level folders, mapped into this namespace by
pyproject.toml: `model/`, `storage/` (parts), `jobs/`, `operator/` (programs); see
docs/architecture.md, "Layers".
"""

__version__ = "0.1.0"
