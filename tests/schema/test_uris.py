"""The URI rule (sphinxx/schema/uris.py): what it refuses and why, its regex twin, the fields carrying it."""

from __future__ import annotations

import dataclasses
import itertools
import re
import typing
from dataclasses import dataclass

import pytest

from sphinxx.schema import uris
from sphinxx.schema.fields import (
    SchemaError,
    constraints_of,
    field,
    help_of,
    hints,
    parse,
    unwrap_optional,
    validate,
)
from sphinxx.schema.openapi import Dialect, schema_of
from sphinxx.schema.resources import Resources, ScalingSweepSpec, SizeOverride, TrainingRunSpec
from sphinxx.schema.run import RunConfig, json_schema, load_config
from sphinxx.schema.uris import STORAGE, TRACKING, problem

GOOD_STORAGE = [
    "",  # whether a field may be empty is its min_length's business
    "s3://bucket",
    "s3://bucket/runs/sweep-a",
    "s3://bucket/runs/sweep-a/",  # one trailing '/' (what storage strips)
    "s3a://bucket/x",
    "S3://bucket/x",
    "s3://bucket/v1.5/..x/...",  # dots inside a name, and '...', are names
    "file:///abs/path",
    "FILE:///abs/path/",
    "memory://store/x",
    "/abs/path",
    ".demo/data/synth-dialog",  # a directory named .demo
    "./data/x",
    "data/x",
    "~/weights",
    "s3://bucket/a b/c%2e%2e",  # percent-escapes are literal in S3 keys
]
BAD_STORAGE = [
    ("s3://bucket/runs/../other-team", uris.DOT_DOT),
    ("s3://bucket/..", uris.DOT_DOT),
    ("file:///tmp/x/../y", uris.DOT_DOT),
    ("../shared/tokenizer", uris.DOT_DOT),
    ("/abs/../etc", uris.DOT_DOT),
    ("s3://bucket/./x", uris.DOT),
    ("././x", uris.DOT),
    (".", uris.DOT),
    ("data/x/.", uris.DOT),
    ("s3://bucket//x", uris.EMPTY),
    ("s3://bucket/x//", uris.EMPTY),
    ("file:////x", uris.EMPTY),
    ("//host/x", uris.EMPTY),
    ("data//x", uris.EMPTY),
    ("data\\tokenizer", uris.BACKSLASH),
    ("s3://bucket\\x", uris.BACKSLASH),
    ("gs://bucket/runs", "unsupported scheme gs://"),
    ("http://minio:9000/runs", "unsupported scheme http://"),
    ("HTTPS://x/y", "unsupported scheme https://"),
    ("file://relative/x", "must be absolute"),
    ("file://", "must be absolute"),
    ("s3://", "no bucket"),
    ("s3:///x", "no bucket"),
    ("memory://", "no store"),
    ("file:///", uris.NO_PATH),
    ("/", uris.NO_PATH),
    ("./", uris.NO_PATH),
]
GOOD_TRACKING = [
    "",
    "http://mlflow:5000",
    "https://mlflow.example.com/api/?x=../y#..",  # after '?' or '#' nothing is a path
    "sqlite:////abs/path/mlflow.db",  # empty segments are sqlite's syntax
    "sqlite:///mlflow.db",
    "postgresql://mlflow@db:5432/mlflow",
    "databricks",
    "databricks://profile:prefix",
    "file:///abs/./mlruns",
    "./mlruns",
    "mlruns/..x",
]
BAD_TRACKING = [
    ("file:///tmp/mlruns/../../etc", uris.DOT_DOT),
    ("../mlruns", uris.DOT_DOT),
    ("http://mlflow/..", uris.DOT_DOT),
    ("http://mlflow/a/..?x", uris.DOT_DOT),
    ("http://mlflow\\@evil/", uris.BACKSLASH),
    ("sqlite:///C:\\mlflow.db", uris.BACKSLASH),
]


@pytest.mark.parametrize("uri", GOOD_STORAGE)
def test_storage_uris_that_say_where_they_point_pass(uri: str) -> None:
    assert problem(uri, STORAGE) is None


@pytest.mark.parametrize(("uri", "reason"), BAD_STORAGE)
def test_storage_uris_are_refused_with_the_rule_they_break(uri: str, reason: str) -> None:
    found = problem(uri, STORAGE)
    assert found is not None and reason in found and "\n" not in found


@pytest.mark.parametrize("uri", GOOD_TRACKING)
def test_tracking_uris_keep_mlflows_syntax(uri: str) -> None:
    assert problem(uri, TRACKING) is None


@pytest.mark.parametrize(("uri", "reason"), BAD_TRACKING)
def test_tracking_uris_refuse_traversal_and_backslashes(uri: str, reason: str) -> None:
    assert problem(uri, TRACKING) == reason


def test_unknown_kind_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown URI kind"):
        problem("s3://b", "s3")
    with pytest.raises(ValueError, match="unknown URI kind"):
        uris.pattern("s3")


def _samples() -> list[str]:
    """Every join of up to three tricky segments under every tricky prefix (~40,000 strings)."""
    prefixes = ["", "/", "./", "s3://", "S3A://", "file://", "file:///", "memory://", "gs://", "http://",
                "sqlite:////", "databricks", "1s3://", "s3:/", ".//", "../", "/./"]  # fmt: skip
    segments = ["a", ".", "..", "...", ".demo", "..x", "x.", "", "a\\b", "x?y", "#f", "~", "h:1", "a\nb"]
    out = []
    for n in range(1, 4):
        for parts in itertools.product(segments, repeat=n):
            path = "/".join(parts)
            out += [prefix + path for prefix in prefixes]
            out.append(path + "/")
    return out


@pytest.mark.parametrize("kind", uris.KINDS)
def test_the_regex_twin_agrees_with_the_rule(kind: str) -> None:
    """The CRDs carry `pattern(kind)`: `kubectl apply` must refuse exactly what admission refuses."""
    regex = re.compile(uris.pattern(kind))
    disagree = [s for s in _samples() if (regex.fullmatch(s) is not None) != (problem(s, kind) is None)]
    assert not disagree, disagree[:10]


@pytest.mark.parametrize("kind", uris.KINDS)
def test_the_regex_twin_is_re2_compatible(kind: str) -> None:
    """RE2 (the API server's regexps) has no lookarounds, backreferences or possessive quantifiers."""
    text = uris.pattern(kind)
    for construct in ("(?=", "(?!", "(?<=", "(?<!", "(?P", "*+", "++", "?+"):
        assert construct not in text, construct
    assert not re.search(r"\\[1-9]", text)


# ------------------------------------------------------------------- the marker in the field model


@dataclass
class _Spec:
    weights: str | None = field(None, "path or URI of weights", uri=STORAGE)
    mirrors: list[str] = field([], "paths or URIs of mirrors", items={"uri": STORAGE})


def test_a_marked_field_gets_the_rule_with_its_path() -> None:
    with pytest.raises(SchemaError) as err:
        parse(_Spec, {"weights": "s3://w/../x"}, "spec")
    assert str(err.value) == f"spec.weights: {uris.DOT_DOT}; got 's3://w/../x'"
    with pytest.raises(SchemaError, match=r"^spec\.mirrors\[1\]: must not have a '\.' segment"):
        parse(_Spec, {"mirrors": ["s3://w/a", "s3://w/./b"]}, "spec")
    with pytest.raises(SchemaError, match=r"^weights: must not contain a backslash"):
        validate(_Spec(weights="w\\x"))
    assert parse(_Spec, {"weights": None, "mirrors": [".demo/w"]}).mirrors == [".demo/w"]


def test_the_json_schema_and_the_crd_carry_the_rule() -> None:
    schema = schema_of(_Spec, Dialect.CRD)["properties"]
    assert schema["weights"]["pattern"] == f"^(?:{uris.pattern(STORAGE)})$"
    assert schema["mirrors"]["items"]["pattern"] == f"^(?:{uris.pattern(STORAGE)})$"
    tracking = json_schema()["properties"]["tracking"]["properties"]["uri"]
    assert tracking["pattern"] == f"^(?:{uris.pattern(TRACKING)})$"


def _uri_fields(cls: type, prefix: str = "") -> dict[str, dict]:
    """Dotted path -> constraints (of each item, for a list) of every field named `uri` or whose help
    says URI."""
    out: dict[str, dict] = {}
    for f in dataclasses.fields(cls):
        tp, _ = unwrap_optional(hints(cls)[f.name])
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            out.update(_uri_fields(tp, f"{prefix}{f.name}."))
        elif item is not None and dataclasses.is_dataclass(item):
            out.update(_uri_fields(item, f"{prefix}{f.name}[]."))
        elif "URI" in help_of(f) or f.name == "uri":
            c = constraints_of(f)
            out[f"{prefix}{f.name}"] = c.get("items", {}) if item is not None else c
    return out


def test_every_uri_field_of_a_spec_carries_the_marker() -> None:
    """A new field whose help says URI must be marked `uri=` (or this test must say why not).

    Not marked: `storage.endpoint_url` (an S3 endpoint, http(s)://host:port, never a path) and the
    status's URIs (the operator writes them from normalized URIs; a pattern in the CRD's status
    schema could only make the operator's own status patches fail)."""
    found = _uri_fields(RunConfig)
    for cls in (TrainingRunSpec, ScalingSweepSpec, SizeOverride, Resources):
        found.update(_uri_fields(cls, f"{cls.__name__}."))
    assert {path: c.get("uri") for path, c in found.items()} == {
        "model.llm_weights": STORAGE,
        "model.convnext_weights": STORAGE,
        "model.dinov2_weights": STORAGE,
        "data.sources[].uri": STORAGE,
        "data.tokenizer": STORAGE,
        "storage.uri": STORAGE,
        "eval.benchmarks.tasks[].uri": STORAGE,
        "tracking.uri": TRACKING,
    }


def test_the_run_config_refuses_a_bad_uri_wherever_it_comes_from() -> None:
    with pytest.raises(SchemaError, match=r"^storage\.uri: must not have a '\.\.' segment"):
        load_config("debug", overrides=["storage.uri=s3://bucket/runs/../other-team"])
    with pytest.raises(SchemaError, match=r"^data\.sources\[0\]\.uri: unsupported scheme gs://"):
        load_config("debug", data={"data": {"sources": [{"name": "a", "uri": "gs://b/a"}]}})
    cfg = load_config(
        "debug", overrides=["model.llm_weights=s3a://w/x/", "data.tokenizer=.demo/data/tokenizer"]
    )
    assert cfg.model.llm_weights == "s3a://w/x/"
