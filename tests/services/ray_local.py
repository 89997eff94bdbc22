"""Ray: one local Ray instance shared by the tests that need it, sized for a 2-core machine."""

from __future__ import annotations

import os


def start_ray(temp_dir: str) -> str:
    """Start a local Ray head in this process and return its GCS address."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # Ray Train starts a PreemptionWatcher actor per worker group to hear of Ray node drains;
    # this one-node Ray never drains a node (the job's own preemption path is SIGTERM, tested
    # as such), and each watcher is one more process importing Ray (~2 CPU-s) per segment.
    # Actors inherit the raylet's environment, which is this process's at ray.init.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    context = ray.init(
        num_cpus=4,  # logical CPUs: lets two training workers plus a driver task fit on 2 real cores
        # Five lanes each start a Ray (.ci/test_lanes.sh); Ray's default store is 30% of RAM each.
        # Tests pass results and checkpoint pointers through it, never tensors.
        object_store_memory=1 << 30,
        include_dashboard=False,
        _temp_dir=temp_dir,
        configure_logging=False,
        log_to_driver=True,
        # No idle workers started ahead of demand: every job here brings its own runtime_env, so
        # a prestarted worker is never used, and each one costs a core-second or two of imports.
        _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False},
    )
    return context.address_info["gcs_address"]


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
