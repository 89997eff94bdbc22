"""Operator settings, read once from the environment (the Helm chart and `sphinxx operator run` set them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/sphinxx/sphinxx:0.1.0"


@dataclass
class Settings:
    image: str = DEFAULT_IMAGE  # SPHINXX_IMAGE: the image of every Ray pod unless a spec names one
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI: used when a config names no tracking.uri
    run_interval: float = 15.0  # SPHINXX_RUN_INTERVAL: seconds between level checks of a TrainingRun
    sweep_interval: float = 15.0  # SPHINXX_SWEEP_INTERVAL: seconds between roll-ups of a sweep
    retry_delay: float = 30.0  # SPHINXX_RETRY_DELAY: wait after MLflow or storage errors

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            image=env.get("SPHINXX_IMAGE", DEFAULT_IMAGE),
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            run_interval=float(env.get("SPHINXX_RUN_INTERVAL", 15)),
            sweep_interval=float(env.get("SPHINXX_SWEEP_INTERVAL", 15)),
            retry_delay=float(env.get("SPHINXX_RETRY_DELAY", 30)),
        )
