"""The reconstruction recipe through Airflow (`make run RECIPE=reconstruction VARIANT=tiny`): a model that is not
a classifier goes through evaluate_and_register (its item embeddings are registered in MLflow) and the reference
check, on the real MovieLens-100K users."""

from __future__ import annotations

import mlflow
import pytest

from tasks.sources import download
from tests.conftest import seed_source_cache
from tests.e2e.test_recipe_runs import make_run

pytestmark = pytest.mark.slow


def test_make_run_reconstruction_registers_the_item_embeddings_and_checks_the_server_state(tmp_path):
    seed_source_cache(download.RECBOLE.filename, tmp_path / "data")  # else the run fetches it with pip
    text = make_run(tmp_path, "reconstruction", '{"experiment_name": "e2e-recon"}')
    assert "| server_holds_only_item_embeddings |" in text

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("e2e-recon").experiment_id])
    tags, params = run.data.tags, run.data.params
    assert params["algorithm"] == "fed_recon" and params["model"] == "matrix_factorization"
    assert tags["fedflow.reference.server_holds_only_item_embeddings"] == "pass"
    for key in ("train_mse", "train_rating_accuracy", "val_mse", "test_mse", "test_rating_accuracy"):
        assert key in run.data.metrics, key
    version = client.get_model_version_by_alias("fedflow-recipe-reconstruction", "candidate")
    assert int(version.version) == 1  # the item embeddings (item id -> vector), registered as a TensorFlow model
