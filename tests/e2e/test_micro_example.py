"""examples/sweeps/micro-family.yaml, the CPU sweep that shows a scaling law, and `make micro-family`.

The sweep itself takes about 20 minutes, so it is not run here (its measured table is in the
README); these cheap checks keep the file, the flavors it names and the make target in step.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import yaml

from sphinxx.jobs.data.synth_tasks import SOURCES
from sphinxx.jobs.local import local_defaults
from sphinxx.schema.flavors import FLAVORS
from sphinxx.sweep import points as expand

from .conftest import REPO

MICRO = REPO / "examples" / "sweeps" / "micro-family.yaml"


def _make_target() -> dict[str, Any]:
    """The arguments `make micro-family` gives `python -m sphinxx.jobs.demo`."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^micro-family:.*\n\t(.+)$", makefile, re.M)
    assert recipe, "Makefile has no micro-family target"
    argv = shlex.split(recipe.group(1))
    assert argv[:3] == ["$(BIN)/python", "-m", "sphinxx.jobs.demo"], argv
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    return {"sweep": flags["--sweep"], "size": int(flags["--size"]), "workdir": flags["--workdir"]}


def test_three_dense_sizes_by_three_nested_fractions_smallest_first() -> None:
    sweep = yaml.safe_load(MICRO.read_text())
    name, raw = sweep["metadata"]["name"], sweep["spec"]
    admitted = expand.admit_sweep(name, raw, local_defaults("file:///tmp/c", "sqlite:///tmp/m.db"))
    pts = expand.points(name, admitted.spec)
    assert [(p.model, p.fraction) for p in pts] == [
        (m, f) for m in ("micro-s", "micro-m", "micro-l") for f in (0.25, 0.5, 1.0)
    ]
    sizes = [FLAVORS[m] for m in ("micro-s", "micro-m", "micro-l")]
    assert not any(f.is_moe for f in sizes)
    n = [f.scaling_params for f in sizes]
    assert n[1] > 2.5 * n[0] and n[2] > 2.5 * n[1]  # 24x from the smallest to the largest
    base = raw["base"]
    assert base["data"]["heldout_records"] > 0 and base["train"]["eval_interval"] == 0
    assert base["data"]["epochs"] == 1.0 and base["train"]["steps"] == 0  # D follows the fraction


def test_make_micro_family_writes_the_data_the_sweep_reads() -> None:
    target = _make_target()
    assert (REPO / target["sweep"]).resolve() == MICRO.resolve()
    data = yaml.safe_load(MICRO.read_text())["spec"]["base"]["data"]
    root = f"{target['workdir']}/data"
    assert data["tokenizer"] == f"{root}/tokenizer"
    assert {(s["name"], s["uri"], s["domain"]) for s in data["sources"]} == {
        (name, f"{root}/{name}", domain) for name, domain, _, _ in SOURCES
    }
    # The held-out split may take at most a tenth of each source (data.heldout_records).
    assert data["heldout_records"] * 10 <= target["size"] // len(SOURCES)
    assert target["workdir"].removeprefix("./") + "/" in (REPO / ".gitignore").read_text().split()


def test_the_sweep_scores_every_synthetic_benchmark_the_make_target_writes(tmp_path, monkeypatch) -> None:
    from sphinxx.jobs.data.synth_bench import TASKS
    from sphinxx.jobs.local import plan

    target = _make_target()
    sweep = yaml.safe_load(MICRO.read_text())
    bench = sweep["spec"]["base"]["eval"]["benchmarks"]
    assert [t["uri"] for t in bench["tasks"]] == [
        f"{target['workdir']}/data/bench/{t.name}.jsonl" for t in TASKS
    ]
    assert 0 < bench["max_samples"] <= 50  # the cap that keeps evaluation within a tenth (README)
    # Relative task paths mean "from where the sweep runs", like the data paths: the local
    # runner makes them absolute for the Ray workers, which run elsewhere.
    monkeypatch.chdir(tmp_path)
    configs = [c for _, c in plan("micro-family", sweep["spec"], "file:///tmp/c", "sqlite:///tmp/m.db")]
    for config in configs:
        uris = [t.uri for t in config.eval.benchmarks.tasks]
        assert uris == [
            str(tmp_path / target["workdir"] / "data" / "bench" / f"{t.name}.jsonl") for t in TASKS
        ]
        assert config.eval.benchmarks.max_samples == bench["max_samples"]
