"""Expert parallelism applied to a built model from outside: `attach_expert_parallel`.

The model is single-device code (docs/model.md, "Single-device code"): an MoE layer built with
`MoEArgs.ep_size` holds its share of the experts, and only runs the dispatch / combine of
`expert_parallel` once an EP group is attached here. Its own module because it needs both the MoE
layer (`moe.py`) and the EP primitives (`expert_parallel.py`), and `moe.py` imports the latter.
"""

from __future__ import annotations

from torch import nn

from sphinxx.model.expert_parallel import ExpertParallel, mark_expert_params
from sphinxx.model.moe import MoE


def attach_expert_parallel(model: nn.Module, ep: ExpertParallel) -> int:
    """Attach ``ep`` to every MoE layer of ``model`` and mark their expert params.

    The layers must have been built with ``MoEArgs.ep_size == ep.size`` (their expert params hold
    ``num_experts / ep.size`` experts). Returns the number of MoE layers found.
    """
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    for moe in layers:
        if moe.args.ep_size != ep.size:
            raise ValueError(
                f"MoE built with ep_size={moe.args.ep_size} but the attached EP group has size {ep.size}; "
                "build the model with MoEArgs.ep_size equal to the EP group size"
            )
        moe.ep = ep
        if ep.size > 1:
            mark_expert_params(list(moe.experts.parameters()), ep.group_name)
    return len(layers)
