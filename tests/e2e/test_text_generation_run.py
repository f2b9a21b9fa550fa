"""The text-generation recipe through Airflow and MLflow: `make run RECIPE=text_generation VARIANT=tiny`
pretrains the character GRU, registers it under its alias, and fine-tunes from the registered version."""

from __future__ import annotations

import shutil

import mlflow
import pytest

from tasks.sources import download
from tests.e2e.test_recipe_runs import make_run

pytestmark = pytest.mark.slow


def test_text_generation_pretrains_registers_and_fine_tunes_from_the_registered_model(tmp_path):
    sources = tmp_path / "data" / "sources"  # the isolated data dir gets the pinned plays (no second download)
    sources.mkdir(parents=True)
    shutil.copy(download.fetch(download.SHAKESPEARE), sources)

    text = make_run(tmp_path, "text_generation", '{"experiment_name": "e2e-text"}')

    assert "| fine_tuning_lowers_held_out_loss |" in text
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    version = client.get_model_version_by_alias("fedflow-text-char-gru-tiny", "pretrained")
    runs = client.search_runs([client.get_experiment_by_name("e2e-text").experiment_id])
    [pretraining] = [r for r in runs if r.data.tags.get("fedflow.role") == "pretrain"]
    [fine_tuning] = [r for r in runs if r.info.run_id != pretraining.info.run_id]
    assert version.run_id == pretraining.info.run_id  # the registered version is the pretraining run's model
    assert pretraining.data.tags["fedflow.pretrain_for_run"] == fine_tuning.info.run_id
    assert pretraining.data.tags["fedflow.pretrain_plays"] == "comedy_of_errors"
    assert pretraining.data.metrics["test_accuracy"] > 5 / 86  # learnt from the comedy, far above chance
    tags = fine_tuning.data.tags
    assert tags["fedflow.warm_start"] == "models:/fedflow-text-char-gru-tiny@pretrained"
    assert tags["fedflow.warm_start_version"] == str(version.version)
    assert tags["fedflow.reference.fine_tuning_lowers_held_out_loss"] in ("pass", "fail")
    assert fine_tuning.data.params["plays"] == "macbeth" and fine_tuning.data.params["model"] == "char_gru"
    artifacts = {a.path for a in client.list_artifacts(fine_tuning.info.run_id, "recipe")}
    assert "recipe/generated_text.txt" in artifacts
