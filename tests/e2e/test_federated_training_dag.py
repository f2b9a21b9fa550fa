"""The whole chain through Airflow: `airflow dags test federated_training`, then MLflow and files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tasks import shards
from tasks.paths import safe_name
from tests.conftest import ROOT
from tests.e2e.conftest import airflow_db_rows, isolated_airflow_env, run_airflow

pytestmark = pytest.mark.slow
CONF = {
    "num_clients": 8, "clients_per_round": 4, "min_examples_per_client": 10, "rounds": 4, "rounds_per_chunk": 2,
    "eval_every": 2, "local_epochs": 1, "experiment_name": "e2e", "registered_model_name": "e2e-digits",
}


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    return isolated_airflow_env(tmp_path_factory.mktemp("airflow-e2e"))


airflow = run_airflow


@pytest.fixture(scope="module")
def dag_run(airflow_env, tmp_path_factory) -> dict:
    log = tmp_path_factory.mktemp("logs") / "dags-test.log"
    done = airflow(airflow_env, "dags", "test", "federated_training", "-c", json.dumps(CONF), log=log)
    assert done.returncode == 0, log.read_text()[-5000:]
    [summary] = Path(airflow_env["FEDFLOW_DATA_DIR"], "runs").glob("*/summary.json")
    return json.loads(summary.read_text())


def mlflow_client(env: dict[str, str]):
    from mlflow import MlflowClient

    uri = f"sqlite:///{env['FEDFLOW_MLRUNS_DIR']}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_every_round_is_in_mlflow_exactly_once_with_lineage_tags(dag_run, airflow_env, no_leaked_workers):
    c = mlflow_client(airflow_env)
    run = c.get_run(dag_run["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["airflow.dag_id"] == "federated_training"
    assert run.data.tags["airflow.run_id"].startswith("manual__")
    assert len(run.data.tags["fedflow.dataset_fingerprint"]) == 20
    assert run.data.params["rounds"] == "4" and run.data.params["clients_per_round"] == "4"
    for key in ("train_loss", "train_accuracy", "round_seconds", "clients_sampled"):
        assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "test_accuracy")) == [2, 4]
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(dag_run["final_test_accuracy"])
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.jsonl", "data", "logs", "tff_env.json"} <= artifacts
    # Lineage: the Airflow task and try, the git commit, the TFF environment that trained it.
    tags = run.data.tags
    assert tags["airflow.task_id"] == "evaluate_and_register" and tags["airflow.try.train_chunk_01"] == "1"
    assert tags["airflow.try_number"] == "1"
    assert len(tags["fedflow.git_sha"]) == 40
    assert tags["fedflow.tff_env.tensorflow-federated"] == "0.87.0"
    assert tags["fedflow.tff_env.tensorflow"].startswith("2.14") and tags["fedflow.devices"]
    # The headline, as the run's description in the MLflow UI and the last lines of the task log.
    assert tags["mlflow.note.content"] == dag_run["headline"]
    assert f"test accuracy {dag_run['final_test_accuracy']:.4f}" in dag_run["headline"]
    assert f"{CONF['registered_model_name']} v{dag_run['version']} (@candidate)" in dag_run["headline"]


def test_the_model_is_registered_and_loads_with_pyfunc_in_the_tff_env(dag_run, airflow_env, tmp_path):
    c = mlflow_client(airflow_env)
    version = c.get_model_version_by_alias("e2e-digits", "candidate")
    assert str(version.version) == dag_run["version"]
    model_dir = c.get_model_version_download_uri("e2e-digits", version.version).removeprefix("file://")
    mlmodel = (Path(model_dir) / "MLmodel").read_text()
    assert "signature:" in mlmodel and "saved_input_example_info:" in mlmodel  # shown in the MLflow UI

    staged_dir = Path(json.loads((Path(dag_run["run_dir"]) / "staged.json").read_text())["path"])
    test = shards.Manifest.read(staged_dir).read_split("test")
    np.save(tmp_path / "x.npy", test.x)
    code = (
        "import sys, numpy as np, mlflow.pyfunc\n"
        f"model = mlflow.pyfunc.load_model({model_dir!r})\n"
        f"logits = np.asarray(model.predict(np.load({str(tmp_path / 'x.npy')!r})))\n"
        f"np.save({str(tmp_path / 'pred.npy')!r}, logits.argmax(axis=1))\n"
    )
    with open(tmp_path / "pyfunc.log", "w") as out:
        done = subprocess.run([str(ROOT / ".venv-tff" / "bin" / "python"), "-c", code], stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, (tmp_path / "pyfunc.log").read_text()[-3000:]
    accuracy = float(np.mean(np.load(tmp_path / "pred.npy") == test.y))
    assert accuracy == pytest.approx(dag_run["final_test_accuracy"], abs=1e-6)


def test_staged_shards_and_run_directory_are_complete(dag_run):
    run_dir = Path(dag_run["run_dir"])
    staged_dir = Path(json.loads((run_dir / "staged.json").read_text())["path"])
    manifest = shards.Manifest.read(staged_dir)
    assert len(manifest.client_ids("train")) == CONF["num_clients"]
    assert all((staged_dir / name).exists() for name in manifest.data["files"])
    assert manifest.data["splits"]["train"]["num_examples"] + manifest.data["splits"]["test"]["num_examples"] == 1797
    for name in ("config.json", "validation.json", "metrics.jsonl", "final.json", "model/MLmodel",
                 "logs/chunk_00.log", "logs/chunk_01.log"):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "logs" / "chunk_02.log").exists()  # the plan needs two chunks; the rest skipped
    assert "round 2/4" in (run_dir / "logs" / "chunk_00.log").read_text()
    assert "Resuming from round 2" in (run_dir / "logs" / "chunk_01.log").read_text()


def test_bad_trigger_params_are_rejected_before_anything_runs(airflow_env, tmp_path):
    log = tmp_path / "bad.log"
    runs_before = set(Path(airflow_env["FEDFLOW_DATA_DIR"], "runs").glob("*"))
    done = airflow(airflow_env, "dags", "test", "federated_training", "-c", json.dumps({"rounds": 0}), log=log)
    assert done.returncode != 0
    assert "Invalid input for param rounds: 0 is less than the minimum of 1" in log.read_text()
    assert set(Path(airflow_env["FEDFLOW_DATA_DIR"], "runs").glob("*")) == runs_before


def test_corrupt_staged_data_stops_the_run_before_training_and_fails_its_mlflow_run(dag_run, airflow_env, tmp_path):
    # The same settings stage to the same content-addressed directory: damage one shard of it.
    staged_dir = Path(json.loads((Path(dag_run["run_dir"]) / "staged.json").read_text())["path"])
    shard = staged_dir / "train-00000.parquet"
    original = shard.read_bytes()
    runs_before = set(Path(airflow_env["FEDFLOW_DATA_DIR"], "runs").iterdir())
    try:
        shard.write_bytes(original[:1000] + bytes([original[1000] ^ 0xFF]) + original[1001:])
        log = tmp_path / "corrupt.log"
        done = airflow(airflow_env, "dags", "test", "federated_training", "-c", json.dumps(CONF), log=log)
    finally:
        shard.write_bytes(original)
    assert done.returncode != 0
    assert "shard train-00000.parquet does not match its manifest checksum" in log.read_text()
    [run_dir] = set(Path(airflow_env["FEDFLOW_DATA_DIR"], "runs").iterdir()) - runs_before
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "logs").exists()  # no training started
    run = mlflow_client(airflow_env).get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["fedflow.validation"] == "failed"


def test_an_engine_configured_from_trigger_params_logs_epsilon_bits_and_heldout_metrics(airflow_env, tmp_path):
    """DP, compression, an adaptive server optimizer and held-out evaluation, on the hybrid engine."""
    conf = {**CONF, "engine": "hybrid", "algorithm": "fedadam", "server_learning_rate": 0.05, "aggregator": "dp",
            "client_sampling": "poisson", "clients_per_round": 4, "num_clients": 10, "heldout_clients": 2,
            "noise_multiplier": 0.3, "compress": True, "compression_threshold": 1000, "dp_epsilon_budget": 100,
            "registered_model_name": "e2e-dp"}
    log = tmp_path / "dp.log"
    done = airflow(airflow_env, "dags", "test", "federated_training", "-c", json.dumps(conf), log=log)
    assert done.returncode == 0, log.read_text()[-5000:]
    c = mlflow_client(airflow_env)
    [run] = c.search_runs([c.get_experiment_by_name("e2e").experiment_id], "params.aggregator = 'dp'")
    epsilons = c.get_metric_history(run.info.run_id, "epsilon")
    assert [m.step for m in epsilons] == [1, 2, 3, 4]
    assert epsilons[-1].value == pytest.approx(float(run.data.tags["fedflow.dp_planned_epsilon"]), rel=1e-5)
    assert run.data.metrics["compression_ratio"] > 2
    assert [m.step for m in c.get_metric_history(run.info.run_id, "heldout_accuracy")] == [2, 4]
    assert run.data.params["algorithm"] == "fedadam" and run.data.params["engine"] == "hybrid"
    assert run.data.tags["fedflow.engine"] == "hybrid" and run.data.tags["fedflow.train_device"] == "CPU"
    plots = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/loss.png", "plots/accuracy.png", "plots/epsilon.png", "plots/compression.png"}


def test_training_tasks_carry_an_mlflow_run_link_to_the_runs_page(dag_run, airflow_env):
    rows = airflow_db_rows(airflow_env, "from airflow.models.xcom import XComModel",
                           "select(XComModel.run_id, XComModel.task_id, XComModel.value)"
                           ".where(XComModel.key == '_link_MlflowRunLink')")
    links = {task: value.strip('"') for run_id, task, value in rows if Path(dag_run["run_dir"]).name == safe_name(f"federated_training__{run_id}")}
    run = mlflow_client(airflow_env).get_run(dag_run["mlflow_run_id"])
    expected = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert links["train_chunk_00"] == expected and links["evaluate_and_register"] == expected
