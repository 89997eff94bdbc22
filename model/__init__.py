"""sphinxx.model: SPHINX-X as single-device torch modules (a part, above the vocabulary).

Vision towers (`vision.py`), any-resolution views and skip tokens (`anyres.py`), the projector
and the whole model (`sphinx.py`), the decoder (`llm.py`), the MoE layer and its kernels
(`moe.py`, `moe_kernels.py`), expert parallelism applied from outside (`expert_parallel.py`),
named flavors (`flavors.py`), foreign weight names in adapters only (`state_dict_adapter.py`,
`convert.py`, `moe_convert.py`), export (`export.py`) and the standalone loader of exported
folders (`exported.py`, which imports nothing but model code), sizes and FLOPs (`info.py`) and the
memory of a model under a `TrainingSetup` (`memory.py`); `sphinxx model` (`cli.py`).

What it may import: the vocabulary (`sphinxx.schema`: `ModelArgs`, the flavor table), torch and
transformers; never storage, the sweep core, the job, the operator, Ray or MLflow
(docs/architecture.md, "Layers"). It takes model shapes and plain values, never a run config.
"""
