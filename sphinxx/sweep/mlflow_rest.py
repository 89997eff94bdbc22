"""The few MLflow REST calls a sweep makes per point, without importing the `mlflow` package.

`mlflow_runs` talks to a tracking *server* (an http(s) URI) through these: the operator makes
them for every point of every sweep, and `from mlflow.tracking import MlflowClient` costs the
process about 120 MB of memory and several seconds at its first call (docs/operator.md,
"MLflow runs off the RayJob path"). Rarer calls (a rollback note, the fit's metrics and plot)
and other stores (`sqlite:///`, `file:`) go through `MlflowClient` as before.

The endpoints are MLflow's REST API 2.0 (`/api/2.0/mlflow/...`), the same requests MlflowClient
sends to a server: experiments get-by-name / create, runs search / create / update / delete.
Authentication follows MLflow's own environment variables (`MLFLOW_TRACKING_TOKEN`, or
`MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`; `MLFLOW_TRACKING_INSECURE_TLS`,
`MLFLOW_TRACKING_SERVER_CERT_PATH`); the timeout is `MLFLOW_HTTP_REQUEST_TIMEOUT`. Any failure,
an HTTP error or no answer, raises `RestError` with MLflow's error code and message.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

API = "/api/2.0/mlflow"


class RestError(RuntimeError):
    """A call failed: no answer, or an error from the server (`code`: MLflow's error code, if any)."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.args[0], self.code)


@dataclass(frozen=True)
class FoundRun:
    run_id: str
    tags: dict[str, str]


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class RestTracking:
    """One tracking server; thread-safe (one pooled HTTP session)."""

    def __init__(self, uri: str):
        # requests comes with the [operator] and [train] extras (mlflow, kubernetes), not the base install.
        import requests

        self.base = uri.rstrip("/") + API
        self.session = requests.Session()
        env = os.environ
        if env.get("MLFLOW_TRACKING_TOKEN"):
            self.session.headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        elif env.get("MLFLOW_TRACKING_USERNAME"):
            self.session.auth = (env["MLFLOW_TRACKING_USERNAME"], env.get("MLFLOW_TRACKING_PASSWORD", ""))
        if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            self.session.verify = False
        elif env.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            self.session.verify = env["MLFLOW_TRACKING_SERVER_CERT_PATH"]

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import requests  # as in __init__

        timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"))
        try:
            response = self.session.request(method, f"{self.base}/{path}", timeout=timeout, **kwargs)
        except requests.RequestException as err:  # refused, DNS, timeout, TLS
            raise RestError(f"{type(err).__name__}: {err}") from err
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        if not response.ok:
            code = body.get("error_code", "") if isinstance(body, dict) else ""
            message = (body.get("message") if isinstance(body, dict) else None) or response.text[:200]
            raise RestError(f"{code or response.status_code}: {message}".strip(), code)
        return body if isinstance(body, dict) else {}

    def experiment_id(self, name: str) -> str | None:
        try:
            body = self._request("GET", "experiments/get-by-name", params={"experiment_name": name})
        except RestError as err:
            if err.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return str(body["experiment"]["experiment_id"])

    def create_experiment(self, name: str, artifact_location: str | None) -> str:
        body: dict[str, Any] = {"name": name}
        if artifact_location:
            body["artifact_location"] = artifact_location
        return str(self._request("POST", "experiments/create", json=body)["experiment_id"])

    def search_runs(
        self, experiment_id: str, query: str, max_results: int, page_token: str | None = None
    ) -> tuple[list[FoundRun], str | None]:
        body: dict[str, Any] = {
            "experiment_ids": [experiment_id],
            "filter": query,
            "max_results": max_results,
        }
        if page_token:
            body["page_token"] = page_token
        found = self._request("POST", "runs/search", json=body)
        runs = [
            FoundRun(
                str(run["info"]["run_id"]),
                {t["key"]: t.get("value", "") for t in (run.get("data") or {}).get("tags") or []},
            )
            for run in found.get("runs") or []
        ]
        return runs, found.get("next_page_token") or None

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        body = {
            "experiment_id": experiment_id,
            "run_name": name,
            "start_time": int(time.time() * 1000),
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        return str(self._request("POST", "runs/create", json=body)["run"]["info"]["run_id"])

    def set_status(self, run_id: str, status: str, ended: bool) -> None:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if ended:
            body["end_time"] = int(time.time() * 1000)
        self._request("POST", "runs/update", json=body)

    def delete_run(self, run_id: str) -> None:
        self._request("POST", "runs/delete", json={"run_id": run_id})
