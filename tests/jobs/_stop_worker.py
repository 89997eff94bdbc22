"""One training worker as a plain process: `python _stop_worker.py RANK WORLD PORT CONFIG.json ATTEMPT`.

What a Ray Train worker runs, without Ray: gloo set up from MASTER_ADDR/PORT, then `loop.train`
in the main thread, so SIGTERM reaches the loop's handler as it would in any plain process. Exit
codes: 0 trained to the end, 3 stopped on request (`Preempted`) with its step committed, 1 error;
the stop watchdog exits with `preemption.EXIT_DEADLINE`.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> int:
    rank, world, port, config_path, attempt = sys.argv[1:6]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, WORLD_SIZE=world,
                      LOCAL_RANK=rank, LOCAL_WORLD_SIZE=world)  # fmt: skip
    import torch.distributed as dist

    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train
    from sphinxx.jobs.preemption import Preempted
    from sphinxx.schema.run import from_dict

    with open(config_path) as fh:
        raw = json.load(fh)
    cfg = from_dict(raw["config"])
    dist.init_process_group("gloo", rank=int(rank), world_size=int(world))
    worker = Worker(
        rank=int(rank), world_size=int(world), attempt=int(attempt), mlflow_run_id=raw["mlflow_run_id"]
    )
    try:
        final = train(cfg, worker)
        print(json.dumps({"final_step": final["step"]}), flush=True)
        return 0
    except Preempted as stopped:
        print(json.dumps({"preempted_at": stopped.step, "why": stopped.why}), flush=True)
        return 3
    except BaseException:  # noqa: BLE001 - the parent test reads the log
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
