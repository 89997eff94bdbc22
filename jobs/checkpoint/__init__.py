"""Save and restore a training run through `sphinxx.storage`, loadable at any world size.

A checkpoint must restore *exactly* after an elastic resize or a retry with fewer workers
(docs/training.md, "Elastic workers and the constant global batch"). ZeRO-1/2 shards the fp32 master weights
and Adam moments over the data-parallel ranks, and expert parallelism slices the experts over EP ranks, so
DeepSpeed's own per-rank files only load at the world size that wrote them. The choice: we write model and
optimizer state keyed by *global* coordinates, never by rank.

- `fragments`: where each parameter sits in its global tensor (`ParamSlot`) and the optimizer
  state as fragments of flattened global tensors (DeepSpeed's partition maths);
- `checkpointer`: the files of one checkpoint and the save/restore protocol every rank runs
  (`Checkpointer`, `RunState`, `Restored`) on top of the store's commit protocol;
- `snapshot`: one rank's files in host memory at the step boundary, and their bytes;
- `background`: the one save a rank may have in flight, and `CheckpointSaveError`;
- `dist`: RNG state and the few collectives the protocol needs (no-ops outside torch.distributed).
"""

from sphinxx.jobs.checkpoint.background import CheckpointSaveError
from sphinxx.jobs.checkpoint.checkpointer import Checkpointer, Restored, RunState

__all__ = ["CheckpointSaveError", "Checkpointer", "Restored", "RunState"]
