"""Apply parallelism to a single-device model: expert parallelism + DeepSpeed ZeRO settings.

Why a separate module: model code stays single-device
(``docs/architecture.md, "Conventions the code follows"`` habit 3); this is the
one place that knows DeepSpeed's MoE bookkeeping (docs/moe.md, "DeepSpeed and ZeRO with experts"):

- EP groups come from ``deepspeed.utils.groups._create_expert_and_data_parallel`` (contiguous EP
  groups, strided eDP groups, name ``ep_size_<EP>``), so our token dispatcher and the ZeRO
  optimizer use the very same groups.
- Expert params carry ``allreduce=False`` and ``group_name`` (``is_moe_param``); the optimizer gets
  param groups split by ``split_params_into_different_moe_groups_for_optimizer`` (``moe: True``).
- DeepSpeed sets ``engine.has_moe_layers`` only for its own ``MoE`` / AutoEP layers. Without it
  ZeRO-1/2 would partition and all-gather expert params as if they were replicated, silently
  destroying EP. :func:`initialize` therefore wraps ``deepspeed.initialize`` in a scoped,
  version-checked shim that sets the flag, and verifies afterwards that every MoE param group is
  reduced and partitioned over its eDP group (a DeepSpeed upgrade that breaks this fails loudly).

Expert grads: our dispatcher leaves each expert's grad as the sum over its EP group's tokens;
DeepSpeed (>= PR #6546) reduces expert grads over eDP and divides by the full DP size, so EP = 2
equals EP = 1 (tests/moe/test_parallelize.py).

Not handled here (the training-job issue): checkpoints. With ``has_moe_layers`` DeepSpeed's
``save_checkpoint`` writes expert files only for its own MoE modules; in EP mode model weights must
be written by our per-rank writer with global expert indices (docs/moe.md, "DeepSpeed and ZeRO with experts").
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from sphinxx.model.attach import attach_expert_parallel
from sphinxx.model.expert_parallel import ExpertParallel
from sphinxx.model.moe import MoE

# DeepSpeed is imported inside the functions that call it: its import probes the accelerator and
# registers its ops (seconds), which the plain-keyword helpers (`deepspeed_config`) and the
# modules that import this one for them (the cost model, benchmarks) never need.

# DeepSpeed versions whose engine internals the MoE shim was read against and tested with.
SHIM_TESTED_DEEPSPEED = ("0.19.8",)
PRECISIONS = ("bf16", "fp32")


def deepspeed_config(
    *,
    zero_stage: int,
    micro_batch: int,
    grad_accum_steps: int = 1,
    precision: str = "bf16",
    grad_clip: float = 0.0,
    ep_size: int = 1,
    overlap_comm: bool = False,
) -> dict[str, Any]:
    """DeepSpeed config dict for our runs (torch AdamW as client optimizer, fp32 master weights)."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    if ep_size > 1 and zero_stage not in (1, 2):
        raise ValueError(
            f"expert parallelism (ep_size={ep_size}) needs ZeRO stage 1 or 2 (DeepSpeed MoE param groups); "
            "use ep_size 1 for ZeRO-3"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage in (1, 2):
        # _configure_moe_settings asserts both for MoE (stage 2) and they are the well-trodden path.
        zero.update(contiguous_gradients=True, reduce_scatter=True, overlap_comm=overlap_comm)
    elif zero_stage == 3:
        zero.update(overlap_comm=overlap_comm)
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # torch.optim.AdamW is our client optimizer (DeepSpeed's fused ones do not run on CPU).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW param groups: matrices decayed, norms/biases not; MoE groups split out for DeepSpeed.

    Every group has a ``name`` (required by DeepSpeed's MoE split). With expert params marked (EP > 1)
    the result also holds ``moe: True`` groups, one per input group and eDP group name.
    """
    from deepspeed.moe.utils import is_moe_param, split_params_into_different_moe_groups_for_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"name": "decay", "params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"name": "no_decay", "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if any(is_moe_param(p) for p in params):
        groups = split_params_into_different_moe_groups_for_optimizer(groups)
    return [g for g in groups if g["params"]]


def init_distributed(backend: str) -> None:
    """``deepspeed.init_distributed(backend)`` without compiling anything at run time.

    On the CPU accelerator (laptops, CI) DeepSpeed's first backend JIT-compiles its shared-memory
    all-reduce op into ``~/.cache/torch_extensions`` under a file lock. The op serves only
    ``inference_all_reduce``; training reduces through gloo. A compile that is killed (Ctrl-C during
    the first demo, a preempted pod) leaves the lock behind, and every later run on that machine
    then waits on it forever without a word. Marking the op incompatible makes DeepSpeed take its
    own no-op path (``build_shm_op`` returns None); CUDA accelerators never build it.
    """
    import deepspeed
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=backend)


def deepspeed_expert_parallel(ep_size: int) -> ExpertParallel:
    """This rank's EP group, created (once) through DeepSpeed's group registry.

    Needs ``deepspeed.init_distributed()`` first; every rank must call it.
    """
    import torch.distributed as dist
    from deepspeed.utils import groups

    name = f"ep_size_{ep_size}"
    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)
    group = groups._get_expert_parallel_group(name)
    return ExpertParallel(group=group, size=ep_size, rank=dist.get_rank(group))


def parallelize(model: nn.Module, *, ep_size: int, zero_stage: int) -> ExpertParallel | None:
    """Prepare ``model`` for :func:`initialize`: EP groups + attached dispatchers, or ZeRO-3 leaves."""
    has_moe = any(isinstance(m, MoE) for m in model.modules())
    if ep_size > 1:
        if not has_moe:
            raise ValueError(f"ep_size={ep_size} needs a model with MoE layers")
        if zero_stage not in (1, 2):
            raise ValueError(f"ep_size={ep_size} needs ZeRO stage 1 or 2, got {zero_stage}")
        ep = deepspeed_expert_parallel(ep_size)
        attach_expert_parallel(model, ep)
        return ep
    if zero_stage == 3 and has_moe:
        # Gather w1/v1/w2 of a layer in one go (docs/moe.md, "DeepSpeed and ZeRO with experts")
        # [U: not yet measured].
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, [MoE])
    return None


@contextlib.contextmanager
def _flag_our_moe_layers() -> Iterator[None]:
    """Scoped shim: make ``DeepSpeedEngine`` treat our EP-attached MoE layers as MoE layers."""
    import deepspeed
    from deepspeed.runtime.engine import DeepSpeedEngine

    if deepspeed.__version__ not in SHIM_TESTED_DEEPSPEED:
        warnings.warn(
            f"DeepSpeed {deepspeed.__version__} is untested with the MoE engine shim (tested: "
            f"{SHIM_TESTED_DEEPSPEED}); the post-initialize checks still run",
            stacklevel=3,
        )
    original = DeepSpeedEngine._configure_distributed_model

    def configure(self: Any, model: nn.Module) -> None:
        original(self, model)
        layers = [m for m in model.modules() if isinstance(m, MoE) and m.ep is not None and m.ep.size > 1]
        if layers:
            self.has_moe_layers = True
            self.num_experts.extend(m.args.num_experts for m in layers)

    DeepSpeedEngine._configure_distributed_model = configure
    try:
        yield
    finally:
        DeepSpeedEngine._configure_distributed_model = original


def check_moe_engine(engine: Any, ep: ExpertParallel) -> None:
    """Raise if the ZeRO optimizer does not reduce/partition expert params over their eDP group."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    try:
        edp = groups._get_expert_data_parallel_group(ep.group_name)
        zero = engine.optimizer
        moe_groups = [i for i, g in enumerate(zero.optimizer.param_groups) if g.get("moe")]
        ok = (
            engine.has_moe_layers
            and moe_groups
            and all(zero.real_dp_process_group[i] is edp for i in moe_groups)
            and all(zero.partition_count[i] == dist.get_world_size(edp) for i in moe_groups)
        )
    except (AttributeError, AssertionError, KeyError, IndexError) as e:  # internals moved
        raise RuntimeError(f"DeepSpeed internals changed; the MoE shim cannot be verified: {e!r}") from e
    if not ok:
        raise RuntimeError(
            "DeepSpeed did not set up expert parallelism: MoE param groups must exist and be reduced and "
            f"partitioned over the eDP group {ep.group_name!r} (has_moe_layers={engine.has_moe_layers}, "
            f"moe groups={moe_groups}). Was the optimizer built with optimizer_param_groups()?"
        )


def initialize(
    model: nn.Module, optimizer: Any, config: dict[str, Any], ep: ExpertParallel | None = None
) -> Any:
    """``deepspeed.initialize`` with the MoE shim when ``ep`` (from :func:`parallelize`) is given.

    Returns the engine. ``optimizer`` must have been built on :func:`optimizer_param_groups`.
    """
    import deepspeed

    if ep is None or ep.size == 1:
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return engine
    with _flag_our_moe_layers():
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    check_moe_engine(engine, ep)
    return engine
