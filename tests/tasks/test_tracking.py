import dataclasses
import socket

import pytest
from mlflow.exceptions import MlflowException

from tasks import atomic, metrics_log, tracking
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths

CFG = ExperimentConfig(num_clients=5, clients_per_round=3, rounds=5, rounds_per_chunk=2, experiment_name="fedflow-test")


def row(round_num, **extra):
    return {"round": round_num, "train_loss": 2.0 / round_num, "train_accuracy": 0.1 * round_num,
            "clients_sampled": 3, "round_seconds": 0.25 + round_num, "wall_time": 1_700_000_000.0 + round_num,
            **extra}


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory):
    """One sqlite store for the module (creating its schema is the slow part); each test has its own run."""
    return tmp_path_factory.mktemp("mlruns")


@pytest.fixture
def run(monkeypatch, mlruns, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FEDFLOW_MLRUNS_DIR", str(mlruns))
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    atomic.write_json(run.config, CFG.to_dict())
    return run


def steps(run_id, key):
    return sorted(m.step for m in tracking.client().get_metric_history(run_id, key))


def test_starting_the_run_twice_returns_the_same_run_and_creates_only_one(run, mlruns):
    cfg = dataclasses.replace(ExperimentConfig.read_json(run.config), experiment_name="fedflow-idempotent")

    first = tracking.start_run(cfg, run, tags={"airflow.run_id": "manual__1"})
    second = tracking.start_run(cfg, run, tags={"airflow.run_id": "manual__1"})

    assert second == first
    c = tracking.client()
    experiment = c.get_experiment_by_name(cfg.experiment_name)
    assert atomic.read_json(run.mlflow_run) == {"run_id": first, "experiment_id": experiment.experiment_id,
                                                "tracking_uri": f"sqlite:///{mlruns / 'mlflow.db'}"}
    assert [r.info.run_id for r in c.search_runs([experiment.experiment_id])] == [first]
    assert (mlruns / "mlflow.db").is_file()


def test_the_runs_params_are_the_config_and_its_tags_include_the_given_ones(run):
    cfg = ExperimentConfig.read_json(run.config)

    rid = tracking.start_run(cfg, run, tags={"airflow.dag_id": "federated_training"})

    data = tracking.client().get_run(rid).data
    assert data.params == {k: str(v) for k, v in cfg.to_dict().items()}
    assert data.tags["airflow.dag_id"] == "federated_training"
    assert data.tags["mlflow.runName"] == "run"


def test_sync_logs_every_round_once_and_a_second_sync_logs_nothing(run):
    rid = tracking.start_run(CFG, run, tags={})
    for r in (1, 2, 3):
        metrics_log.append_row(run.metrics, row(r, **({"test_accuracy": 0.8} if r == 2 else {})))

    assert tracking.sync_metrics(run) == 3
    assert tracking.sync_metrics(run) == 0

    for key in ("train_loss", "train_accuracy", "clients_sampled", tracking.ROUND_MARKER):
        assert steps(rid, key) == [1, 2, 3], key
    assert steps(rid, "test_accuracy") == [2]
    assert steps(rid, "round") == [] and steps(rid, "wall_time") == []
    loss = {m.step: (m.value, m.timestamp) for m in tracking.client().get_metric_history(rid, "train_loss")}
    assert loss[2] == (1.0, 1_700_000_002_000)


def test_rows_appended_after_a_sync_are_logged_by_the_next_sync(run):
    rid = tracking.start_run(CFG, run, tags={})
    for r in (1, 2):
        metrics_log.append_row(run.metrics, row(r))
    assert tracking.sync_metrics(run) == 2

    for r in (3, 4, 5):
        metrics_log.append_row(run.metrics, row(r))

    assert tracking.sync_metrics(run) == 3
    assert steps(rid, "train_loss") == [1, 2, 3, 4, 5]
    assert steps(rid, tracking.ROUND_MARKER) == [1, 2, 3, 4, 5]


def test_a_sync_before_any_round_logs_nothing(run):
    rid = tracking.start_run(CFG, run, tags={})

    assert tracking.sync_metrics(run) == 0
    assert steps(rid, tracking.ROUND_MARKER) == []


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rounds_that_failed_to_sync_while_the_server_was_down_are_logged_by_the_next_sync(run, monkeypatch):
    rid = tracking.start_run(CFG, run, tags={})
    metrics_log.append_row(run.metrics, row(1))
    with monkeypatch.context() as outage:
        outage.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
        outage.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        with pytest.raises(MlflowException, match="API request to http://127.0.0.1"):
            tracking.sync_metrics(run)
    metrics_log.append_row(run.metrics, row(2))

    assert tracking.sync_metrics(run) == 2
    assert steps(rid, tracking.ROUND_MARKER) == [1, 2]


def test_the_ui_url_points_at_the_runs_page_once_the_run_exists(run, mlruns, monkeypatch):
    assert tracking.ui_url(run) is None
    rid = tracking.start_run(ExperimentConfig.read_json(run.config), run, tags={})
    monkeypatch.setenv("FEDFLOW_MLFLOW_UI", "https://mlflow.example.org/")

    experiment_id = tracking.client().get_run(rid).info.experiment_id
    assert tracking.ui_url(run) == f"https://mlflow.example.org/#/experiments/{experiment_id}/runs/{rid}"
