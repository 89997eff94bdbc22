"""What one checkpoint of a run weighs: bytes per save and per rank, the host memory a snapshot
needs, and the upload time at a stated bandwidth. Pure: it reads a memory estimate
(`model.memory.memory_estimate`, through `jobs.run_memory`) and plain values.

The files are those `jobs/checkpoint` writes (its module docstring): every trainable weight at the
training precision (dense tensors dealt round-robin over the ranks, each expert written by the
first expert-parallel replica), and the optimizer state in global coordinates: fp32 AdamW m and v
of every trainable parameter, and the fp32 master weights where DeepSpeed keeps them apart from
the weights (bf16 training, or ZeRO-1/2). Frozen towers loaded from their own weights are not
copied into checkpoints. Per rank, the figure is the largest rank's (rank 0: a share of the
dense tensors, its expert slice, its optimizer partition).

A save first copies the rank's files to host memory (the snapshot), then serialises one file at a
time beside it: the snapshot needs the rank's bytes plus its largest file (the optimizer file)
plus the transfer's parts in flight; through a scratch volume (`storage.scratch`) the file goes
to disk instead. The ranks upload at the same time, each at the stated bandwidth.
"""

from __future__ import annotations

from typing import Any

GIB = 1 << 30
GB = 1e9
DEFAULT_UPLOAD_GB_PER_S = 1.0  # per rank (a node's share of its NIC to the store); printed with the figure
TRANSFER_BUFFERS = 4 * 4 * 8 * (1 << 20)  # StorageOptions: 4 files x 4 parts x 8 MiB in flight


def checkpoint_size(
    memory: dict[str, Any], upload_gb_per_s: float = DEFAULT_UPLOAD_GB_PER_S, scratch: bool = False
) -> dict[str, Any]:
    """Bytes per save and per rank, snapshot memory and upload seconds (module docstring), JSON-ready."""
    if not upload_gb_per_s > 0:
        raise ValueError(f"the upload bandwidth must be > 0 GB/s, got {upload_gb_per_s}")
    setup, params = memory["setup"], memory["params"]
    world, ep, zero = setup["world_size"], setup["ep_size"], setup["zero_stage"]
    weight = 2 if setup["precision"] == "bf16" else 4
    optimizer = 8 + (4 if weight != 4 or zero > 0 else 0)  # m and v, plus separate fp32 masters
    dense, local = params["dense"], params["experts_local"]
    trainable = dense + local * ep
    expert_optimizer = local / (world // ep) if zero > 0 else local  # ZeRO partitions; else the writer
    rank_model = weight * (dense / world + local)
    rank_optimizer = optimizer * (dense / world + expert_optimizer)
    per_rank = rank_model + rank_optimizer
    snapshot = per_rank + TRANSFER_BUFFERS + (0 if scratch else rank_optimizer)
    return {
        "bytes_per_save": round((weight + optimizer) * trainable),
        "bytes_per_rank": round(per_rank),
        "snapshot_host_bytes_per_rank": round(snapshot),
        "upload_gb_per_s": upload_gb_per_s,
        "upload_seconds": per_rank / (upload_gb_per_s * GB),
        "through_scratch": scratch,
    }


def describe(size: dict[str, Any]) -> str:
    """One line for `sphinxx model info` and `sphinxx sweep plan --cost`."""
    save, rank = size["bytes_per_save"] / GIB, size["bytes_per_rank"] / GIB
    snapshot = size["snapshot_host_bytes_per_rank"] / GIB
    return (
        f"checkpoint {save:,.1f} GiB per save, {rank:,.2f} GiB per rank; snapshot {snapshot:,.2f} GiB "
        f"host memory per rank; upload {size['upload_seconds']:,.1f} s per save at "
        f"{size['upload_gb_per_s']:g} GB/s per rank"
    )
