"""The entrypoint's config resolution, Ray storage mapping and worker environment (no Ray run)."""

from __future__ import annotations

import json
import pickle

import pytest

from sphinxx.jobs import train
from sphinxx.schema.run import ConfigError

DATA = ["data.tokenizer=/data/tok", "data.sources=[{name: a, uri: /data/a}]"]


def _resolve(*overrides: str, preset: str = "debug"):
    return train.read_config(train.parse_args(["--preset", preset, *DATA, *overrides]))


def test_identity_is_the_configs_the_environment_only_fills_the_stores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPHINXX_RUN_ID", "trun-abc")  # neither is read: identity travels in the config
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweep-x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    cfg = _resolve("storage.uri=s3://bucket/prefix", "train.steps=7", "run_id=mine")
    assert (cfg.run_id, cfg.tracking.experiment, cfg.tracking.uri) == (
        "mine",
        "sphinxx",
        "http://mlflow:5000",
    )
    assert cfg.storage.endpoint_url == "http://minio:9000" and cfg.train.steps == 7


def test_a_config_the_run_cannot_train_on_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert train.main(["--preset", "debug", "storage.uri=file:///tmp/x"]) == train.EXIT_CONFIG
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["error"].startswith("invalid config: data.sources: is empty")


def test_config_file_from_a_uri_layers_over_the_preset(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "preset: debug-moe\nrun_id: from-file\ntrain: {steps: 3}\nstorage: {uri: 'file:///tmp/x'}\n"
        "data: {tokenizer: /tok, sources: [{name: a, uri: /a}]}\n"
    )
    cfg = train.read_config(train.parse_args(["--config", path.as_uri(), "train.lr=0.5"]))
    assert (cfg.run_id, cfg.model.flavor, cfg.train.steps, cfg.train.lr) == ("from-file", "debug-moe", 3, 0.5)


def test_bad_configs_exit_2_with_a_summary_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    with pytest.raises(ConfigError, match="memory://"):
        _resolve("storage.uri=memory://x")
    assert train.main(["--config", str(tmp_path / "missing.yaml")]) == train.EXIT_CONFIG
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sphinxx_summary"] and summary["status"] == "failed"
    assert "does not exist" in summary["error"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {lr: 1\n")
    assert train.main(["--config", str(broken)]) == train.EXIT_CONFIG
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert f"{broken} is not valid YAML (line 2" in error
    assert (
        train.main(["--preset", "debug", *DATA, "train.lr=-1", "storage.uri=file:///tmp/x"])
        == train.EXIT_CONFIG
    )
    assert "train.lr" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


def test_ray_storage_is_the_run_root_and_picklable_on_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    local = _resolve("run_id=r1", "storage.uri=file:///data/ckpt")
    path, fs = train.ray_storage(local.run_id, local.storage)
    assert (path, fs) == ("/data/ckpt/r1/ray", None)
    remote = _resolve("run_id=r1", "storage.uri=s3://bucket/sweeps/a")
    path, fs = train.ray_storage(remote.run_id, remote.storage)
    assert path == "bucket/sweeps/a/r1/ray"
    clone = pickle.loads(pickle.dumps(fs))  # Ray ships it to the controller and workers
    assert clone.type_name == fs.type_name


def test_worker_env_forwards_named_variables_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPHINXX_SAMPLE_TRACE", "/tmp/trace")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.delenv("SPHINXX_WORKER_ENV", raising=False)
    assert train.worker_env().get("SPHINXX_SAMPLE_TRACE") == "/tmp/trace"
    assert "AWS_SECRET_ACCESS_KEY" not in train.worker_env()
    monkeypatch.setenv("SPHINXX_WORKER_ENV", "AWS_SECRET_ACCESS_KEY,NOT_SET")
    env = train.worker_env()
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cret" and "NOT_SET" not in env


def test_default_tracking_store_is_the_users_never_the_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Without a configured store the job tracks to $SPHINXX_HOME/mlflow.db, artifacts beside it:
    nothing lands where the command was run, and the absolute URI travels to every worker."""
    from mlflow.tracking import MlflowClient

    from sphinxx.jobs.tracking import create_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home, launch = tmp_path / "home", tmp_path / "launch"
    launch.mkdir()
    monkeypatch.setenv("SPHINXX_HOME", str(home))
    monkeypatch.chdir(launch)
    cfg = _resolve()
    assert cfg.tracking.uri == f"sqlite:///{home / 'mlflow.db'}"
    run_id = create_run(cfg.tracking.uri, "pinned", "r")
    MlflowClient(cfg.tracking.uri).log_text(run_id, "hello", "note.txt")
    assert not any(launch.iterdir()), list(launch.iterdir())  # no mlflow.db, no mlruns/ in the cwd
    assert (home / "mlflow.db").exists() and list((home / "mlartifacts").rglob("note.txt"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("train: {lr: .nan}\n", "invalid config: train.lr: must be a finite number"),
        ("data: {epochs: .inf}\n", "invalid config: data.epochs: must be a finite number"),
        (
            "tracking: {uri: 'postgresql://u:hunter2@db/x'}\n",
            "invalid config: tracking.uri: the URI carries a password",
        ),
        (
            "model: {llm_weights: 's3://w/x?X-Amz-Security-Token=abc'}\n",
            "invalid config: model.llm_weights: the value",
        ),
    ],
    ids=["nan", "inf", "password", "presigned"],
)
def test_the_job_refuses_round_two_input_at_start_in_one_line(
    text: str, says: str, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The third path (after admission and the offline CLI): the job's own reader, before any GPU
    work, exits 2 with one summary line naming the field and the rule (and never the secret)."""
    path = tmp_path / "run.yaml"
    path.write_text("preset: debug\nstorage: {uri: 'file:///tmp/x'}\n" + text)
    assert train.main(["--config", str(path), *DATA]) == train.EXIT_CONFIG
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert error.startswith(says) and "\n" not in error and "hunter2" not in error, error
