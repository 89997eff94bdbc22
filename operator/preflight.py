"""The pre-flight check of a TrainingRun: every input readable, the checkpoint prefix writable.

Runs before a run's first RayJob (docs/operator.md, "Pre-flight checks"), with the operator's own
credentials: the Helm chart gives the operator the same Secret / IRSA role as the Ray pods. A
cluster where the operator cannot reach the buckets turns it off (`SPHINXX_PREFLIGHT=0`).

Results are cached per (URI, access) for `CACHE_S`: a 1,000-point sweep shares its tokenizer,
sources and prefix, and is checked with a handful of requests, not thousands.
"""

from __future__ import annotations

import threading
import time

from sphinxx.schema.run import RunConfig
from sphinxx.storage import StorageOptions
from sphinxx.storage.probe import probe
from sphinxx.sweep.inputs import Input, run_inputs

CACHE_S = 60.0
_cache: dict[tuple[str, str, tuple[str, ...], str | None], tuple[float, str | None]] = {}
_lock = threading.Lock()


def check_run(cfg: RunConfig, now: float | None = None) -> list[str]:
    """Problems, one line each naming the field and the URI; [] when the run can start."""
    options = StorageOptions(endpoint_url=cfg.storage.endpoint_url)
    problems = []
    for item in run_inputs(cfg):
        why = _probe(item, options, time.monotonic() if now is None else now)
        if why is not None:
            problems.append(f"{item.field}: {item.uri} {why}")
    return problems


def _probe(item: Input, options: StorageOptions, now: float) -> str | None:
    key = (item.uri, item.access, item.needs_any, options.endpoint_url)
    with _lock:
        hit = _cache.get(key)
    if hit is not None and now - hit[0] < CACHE_S:
        return hit[1]
    why = probe(item.uri, item.access, item.needs_any, options)
    with _lock:
        _cache[key] = (now, why)
    return why
