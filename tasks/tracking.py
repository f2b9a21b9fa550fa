"""Everything fedflow writes to MLflow goes through this module (Airflow side only).

One MLflow run per DAG run, created once and remembered in the run directory (``mlflow_run.json``),
so retried tasks log into the same run. Metrics come from ``metrics.jsonl`` (the source of truth) and
are synced idempotently: a round already in MLflow is never logged twice, an MLflow outage loses
nothing (the next sync catches up).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from tasks import atomic, metrics_log, paths
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths

log = logging.getLogger(__name__)
# Logged last in every round's batch: its history says which rounds MLflow already has.
ROUND_MARKER = "round_seconds"
MODEL_ALIAS = "candidate"
_NOT_METRICS = {"round", "wall_time"}


# MLflow's own default retries a refused connection 7 times over ~4 minutes. Every sync here is
# idempotent and repeated (each poll, each chunk, evaluation), so a short retry is enough and keeps an
# MLflow outage from stalling a chunk's log streaming. Deployments may still set their own values.
_HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def client() -> MlflowClient:
    for name, value in _HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = paths.tracking_uri()
    if uri.startswith("sqlite:///"):
        paths.mlruns_dir().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c: MlflowClient, name: str) -> str:
    existing = c.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    embedded = paths.tracking_uri().startswith("sqlite:///")
    try:
        return c.create_experiment(name, artifact_location=f"{paths.artifact_root()}/{name}" if embedded else None)
    except MlflowException:  # created concurrently by another run
        return c.get_experiment_by_name(name).experiment_id


def run_id(run: RunPaths) -> str:
    return atomic.read_json(run.mlflow_run)["run_id"]


def start_run(cfg: ExperimentConfig, run: RunPaths, *, tags: Mapping[str, str]) -> str:
    """Creates the MLflow run of this DAG run, or returns the one created by an earlier try."""
    if run.mlflow_run.exists():
        return run_id(run)
    c = client()
    all_tags = {"mlflow.runName": run.root.name, "fedflow.git_sha": git_sha(), **tags}
    created = c.create_run(experiment_id(c, cfg.experiment_name), tags=all_tags)
    rid = created.info.run_id
    c.log_batch(rid, params=[Param(k, str(v)) for k, v in sorted(cfg.to_dict().items())])
    atomic.write_json(run.mlflow_run, {"run_id": rid, "experiment_id": created.info.experiment_id,
                                       "tracking_uri": paths.tracking_uri()})
    log.info("MLflow run %s in experiment %r (%s)", rid, cfg.experiment_name, paths.tracking_uri())
    return rid


def ui_url(run: RunPaths) -> str | None:
    """The run's page in the MLflow UI (``FEDFLOW_MLFLOW_UI``, default http://127.0.0.1:5000), or None
    before the run exists. Read from the run directory only: cheap enough for every task's extra link."""
    if not run.mlflow_run.exists():
        return None
    info = atomic.read_json(run.mlflow_run)
    base = paths.mlflow_ui_url().rstrip("/")
    return f"{base}/#/experiments/{info.get('experiment_id', '0')}/runs/{info['run_id']}"


def set_tags(run: RunPaths, tags: Mapping[str, str]) -> None:
    client().log_batch(run_id(run), tags=[RunTag(k, str(v)) for k, v in tags.items()])


def environment_tags(run: RunPaths) -> dict[str, str]:
    """Lineage tags from the trainer's ``tff_env.json``: the TFF environment's package versions and
    devices (empty before the first chunk ran)."""
    if not run.tff_env.exists():
        return {}
    env = atomic.read_json(run.tff_env)
    tags = {f"fedflow.tff_env.{name}": version for name, version in env["packages"].items()}
    tags["fedflow.tff_env.python"] = env["python"]
    tags["fedflow.devices"] = ",".join(env["devices"])
    for key in ("engine", "train_device"):  # absent from records written before the hybrid engine
        if key in env:
            tags[f"fedflow.{key}"] = env[key]
    return tags


def log_artifact(run: RunPaths, path: Path, artifact_path: str | None = None) -> None:
    if Path(path).exists():
        client().log_artifact(run_id(run), str(path), artifact_path)


def log_artifacts(run: RunPaths, directory: Path, artifact_path: str | None = None) -> None:
    if Path(directory).is_dir():
        client().log_artifacts(run_id(run), str(directory), artifact_path)


def reachable(timeout_s: float = 5.0) -> bool:
    """Whether the tracking store answers: an MLflow server's ``/health``; the embedded store always."""
    uri = paths.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def sync_metrics_if_reachable(run: RunPaths) -> int | None:
    """:func:`sync_metrics`, except that an unreachable MLflow server is logged, not raised (returns
    None): the rounds wait in ``metrics.jsonl`` for the next sync. Other errors propagate."""
    try:
        return sync_metrics(run)
    except Exception as e:
        if reachable():
            raise
        log.warning("MLflow at %s is unreachable (%s); the rounds stay in %s and are synced by the next "
                    "task once it is back", paths.tracking_uri(), type(e).__name__, run.metrics)
        return None


def sync_metrics(run: RunPaths) -> int:
    """Logs every round of ``metrics.jsonl`` that MLflow does not have yet; returns how many."""
    c, rid = client(), run_id(run)
    logged = {m.step for m in c.get_metric_history(rid, ROUND_MARKER)}
    batch: list[Metric] = []
    new_rounds = 0
    for row in metrics_log.read_rows(run.metrics):
        if row["round"] in logged:
            continue
        batch.extend(round_metrics(row))
        new_rounds += 1
        if len(batch) > 900:  # MLflow accepts at most 1000 metrics per batch
            c.log_batch(rid, metrics=batch)
            batch = []
    if batch:
        c.log_batch(rid, metrics=batch)
    return new_rounds


def round_metrics(row: Mapping[str, Any]) -> list[Metric]:
    timestamp = int(row.get("wall_time", time.time()) * 1000)
    values = [  # ε is infinite without noise: MLflow would store it as 1.8e308, so it is left out
        Metric(key, float(value), timestamp, int(row["round"]))
        for key, value in sorted(row.items())
        if key not in _NOT_METRICS and key != ROUND_MARKER and isinstance(value, (int, float)) and not math.isinf(value)
    ]
    return [*values, Metric(ROUND_MARKER, float(row[ROUND_MARKER]), timestamp, int(row["round"]))]


def log_and_register_model(run: RunPaths, cfg: ExperimentConfig, final: Mapping[str, Any]) -> dict[str, Any]:
    """Logs the exported model as an MLflow LoggedModel and registers it (alias ``candidate``)."""
    registered = run.root / "registered.json"
    if registered.exists():  # an earlier try got this far
        return atomic.read_json(registered)
    c, rid = client(), run_id(run)
    model = c.create_logged_model(
        experiment_id=c.get_run(rid).info.experiment_id,
        name="model",
        source_run_id=rid,
        model_type="tensorflow",
        params={k: str(v) for k, v in cfg.to_dict().items()},
    )
    c.log_model_artifacts(model.model_id, str(run.model))
    c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    c.log_batch(rid, metrics=[Metric(f"final_{k}", float(final[k]), int(time.time() * 1000), int(final["round"]))
                              for k in ("test_accuracy", "test_loss")])
    version = mlflow.register_model(f"models:/{model.model_id}", cfg.registered_model_name)
    c.set_registered_model_alias(cfg.registered_model_name, MODEL_ALIAS, version.version)
    info = {
        "model_id": model.model_id,
        "model_uri": f"models:/{cfg.registered_model_name}@{MODEL_ALIAS}",
        "registered_model_name": cfg.registered_model_name,
        "version": str(version.version),
        "download_uri": c.get_model_version_download_uri(cfg.registered_model_name, version.version),
    }
    atomic.write_json(registered, info)
    return info


def finish_run(run: RunPaths, status: str = "FINISHED") -> None:
    client().set_terminated(run_id(run), status)


def git_sha() -> str:
    """The checkout's commit (lineage), or "unknown" outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
