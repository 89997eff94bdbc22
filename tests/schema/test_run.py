"""The run-config schema: layering, validation with field paths, schema generation."""

from __future__ import annotations

import json

import jsonschema
import pytest

from sphinxx.schema.flavors import NAMES as FLAVORS
from sphinxx.schema.flavors import resolve
from sphinxx.schema.run import (
    ConfigError,
    RunConfig,
    config_hash,
    flatten,
    json_schema,
    load_config,
    preset_names,
    to_dict,
)


def test_layers_apply_in_order(tmp_path) -> None:
    run_file = tmp_path / "run.yaml"
    run_file.write_text("preset: debug\ntrain:\n  lr: 0.5\n  steps: 7\nstorage:\n  uri: s3://bucket/p\n")
    cfg = load_config(file=str(run_file), overrides=["train.lr=0.25"])
    assert isinstance(cfg, RunConfig)
    assert cfg.train.lr == 0.25  # override beats file
    assert cfg.train.steps == 7  # file beats preset (debug sets 20)
    assert cfg.train.micro_batch == 2  # preset beats defaults (4)
    assert cfg.train.betas == [0.9, 0.95]  # defaults survive
    assert cfg.storage.uri == "s3://bucket/p"


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_resolves(preset: str) -> None:
    cfg = load_config(preset=preset, overrides=["storage.uri=s3://b/p"])
    assert cfg.model.flavor in FLAVORS


def test_published_presets_cover_the_parameter_axis() -> None:
    assert set(preset_names()) >= {
        "debug",
        "debug-moe",
        "tinyllama-1.1b",
        "internlm2-7b",
        "llama2-13b",
        "mixtral-8x7b",
    }
    assert load_config("mixtral-8x7b", overrides=["storage.uri=s3://b"]).train.lr == 5e-6
    assert load_config("llama2-13b", overrides=["storage.uri=s3://b"]).train.lr == 2e-5


def test_the_plus_2k_preset_trains_on_the_flavors_672_canvas() -> None:
    plus, plus_2k = (
        load_config(name, overrides=["storage.uri=s3://b"]) for name in ("llama2-13b", "llama2-13b-2k")
    )
    assert (
        plus_2k.model.flavor == "llama2-13b-2k"
        and plus_2k.data.canvas == 672 == 224 * resolve("llama2-13b-2k").grid
    )
    assert plus.data.canvas == 448
    assert (plus_2k.train, plus_2k.parallel) == (plus.train, plus.parallel)  # only the canvas differs


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("train.lr=abc", "train.lr"),
        ("train.lrr=1", "train.lrr"),
        ("train.steps=-3", "train.steps"),
        ("data.fraction=0", "data.fraction"),
        ("data.fraction=1.5", "data.fraction"),
        ("model.flavor=gpt-5", "model.flavor"),
        ("parallel.min_workers=4", "parallel.min_workers"),
        ("parallel.ep_size=2", "parallel.ep_size"),
        ("storage.uri=ftp://x", "storage.uri"),
        ("storage.keep_last=1", "storage.keep_last"),
        ("run_id=Bad_Name", "run_id"),
        ("model.overrides.n_layers=0", "model.overrides.n_layers"),
        ("model.overrides.hidden=1", "model.overrides.hidden"),
        ("model.overrides.n_kv_heads=3", "model.overrides"),
        ("storage.uri=memory://x", "storage.uri"),
        ("train.betas=[0.9]", "train.betas"),
        ("eval.benchmarks.max_new_tokens=0", "eval.benchmarks.max_new_tokens"),
        ("eval.benchmarks.top_p=0", "eval.benchmarks.top_p"),
    ],
)
def test_bad_values_name_the_field(override: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("debug", overrides=[override])
    assert info.value.path.replace("[0]", ".0") == path
    assert str(info.value).startswith(path)


def test_benchmark_task_files_are_checked_by_field() -> None:
    def tasks(*items: dict) -> dict:
        return {"eval": {"benchmarks": {"tasks": list(items)}}}

    cfg = load_config(
        "debug", data=tasks({"uri": "s3://bench/tasks/gqa.jsonl"}, {"uri": "/t/a.jsonl", "name": "a"})
    )
    assert [t.name for t in cfg.eval.benchmarks.tasks] == [None, "a"] and cfg.eval.benchmarks.temperature == 0
    with pytest.raises(ConfigError, match=r"^eval\.benchmarks\.tasks\[0\]\.uri"):
        load_config("debug", data=tasks({"uri": "ftp://bench/gqa.jsonl"}))
    with pytest.raises(ConfigError, match=r"^eval\.benchmarks\.tasks: task names must be unique"):
        load_config(
            "debug", data=tasks({"uri": "/t/a.jsonl", "name": "x"}, {"uri": "/t/b.jsonl", "name": "x"})
        )
    with pytest.raises(ConfigError, match=r"^eval\.benchmarks\.tasks: a task file is listed twice"):
        load_config("debug", data=tasks({"uri": "/t/a.jsonl"}, {"uri": "/t/a.jsonl", "name": "b"}))


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^storage\.uri: is required"):
        load_config("tinyllama-1.1b")


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match=r"parallel\.zero_stage: must be one of 0, 1, 2"):
        load_config("debug-moe", overrides=["parallel.zero_stage=3"])
    with pytest.raises(ConfigError, match="must divide"):
        load_config("debug-moe", overrides=["parallel.min_workers=3", "parallel.max_workers=3"])
    with pytest.raises(ConfigError, match="megablocks runs on CUDA only"):
        load_config("debug-moe", overrides=["model.moe_kernel=megablocks"])


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="known presets: debug"):
        load_config("nope")


def test_schema_accepts_resolved_configs_and_rejects_bad_ones() -> None:
    schema = json_schema()
    good = to_dict(load_config("debug"))
    jsonschema.Draft202012Validator(schema).validate(good)
    for bad in ({**good, "extra": 1}, {**good, "train": {**good["train"], "lr": "abc"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema).validate(bad)
    assert schema["properties"]["model"]["properties"]["flavor"]["enum"] == list(FLAVORS)
    assert "description" in schema["properties"]["train"]["properties"]["lr"]


def test_flatten_and_hash_are_stable() -> None:
    a, b = load_config("debug"), load_config("debug")
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load_config("debug", overrides=["train.lr=0.5"]))
    flat = flatten(a)
    assert flat["train.lr"] == a.train.lr and flat["parallel.zero_stage"] == 0
    json.dumps(flat)  # MLflow params must be JSON-able scalars
