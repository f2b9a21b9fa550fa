"""A recipe from the README's command: `make run RECIPE=... VARIANT=tiny` through `airflow dags test`,
ending with the reference check in MLflow."""

from __future__ import annotations

import subprocess

import mlflow
import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import isolated_airflow_env

pytestmark = pytest.mark.slow


def test_make_run_a_recipe_ends_with_its_reference_check_in_mlflow(tmp_path):
    env = isolated_airflow_env(tmp_path)
    out = tmp_path / "make.log"
    with open(out, "w") as log:  # a file, never a pipe (DESIGN.md: worker_binary holds inherited pipes)
        done = subprocess.run(["make", "-s", "run", "RECIPE=image_classification", "VARIANT=tiny",
                               'CONF={"experiment_name": "e2e-recipes"}'], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1200)
    text = out.read_text()
    assert done.returncode == 0, text[-4000:]
    assert "Reference check" in text and "| train_loss_falls_every_round |" in text

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("e2e-recipes").experiment_id])
    tags, params = run.data.tags, run.data.params
    assert tags["fedflow.recipe"] == "image_classification" and tags["fedflow.recipe_variant"] == "tiny"
    assert tags["fedflow.tutorial"] == "federated_learning_for_image_classification"
    assert tags["fedflow.reference_check"] == "pass", {k: v for k, v in tags.items() if "reference" in k}
    assert params["model"] == "softmax" and params["client_sampling"] == "fixed" and params["rounds"] == "3"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reference")}
    assert artifacts == {f"reference/reference_check.{ext}" for ext in ("csv", "md", "html")}
