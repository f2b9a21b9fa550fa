"""A sweep through Airflow: `airflow dags test sweep_tiny` (tests/fixtures/sweeps/tiny.yaml), then MLflow.

The tiny grid is noise multiplier {0.1, 0.3} x num_clients {8, 400}: the two 8-client points train
(2 rounds, one TFF process each), the two 400-client points fail at staging, so one run shows the
mapped points, the comparison, the champion, and the sweep failing because some points failed.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, worker_binaries
from tests.e2e.conftest import airflow_db_rows, isolated_airflow_env, run_airflow

pytestmark = pytest.mark.slow
FIXTURES = ROOT / "tests" / "fixtures" / "sweeps"


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("sweep-e2e")
    env = {**isolated_airflow_env(base), "FEDFLOW_SWEEPS_DIR": str(FIXTURES)}
    log = base / "dags-test.log"
    workers_before = worker_binaries()
    done = run_airflow(env, "dags", "test", "sweep_tiny", log=log)
    deadline = time.monotonic() + 5
    while (leaked := worker_binaries() - workers_before) and time.monotonic() < deadline:
        time.sleep(0.2)
    runs = Path(env["FEDFLOW_DATA_DIR"], "runs")
    [sweep_dir] = [d for d in runs.glob("sweep_tiny__*") if (d / "sweep.json").exists()]  # not a point's
    return {"env": env, "returncode": done.returncode, "log": log.read_text(), "dir": sweep_dir, "leaked": leaked,
            "plan": json.loads((sweep_dir / "sweep.json").read_text()),
            "table": list(csv.DictReader((sweep_dir / "comparison" / "comparison.csv").open()))}


def mlflow_client(env: dict[str, str]):
    from mlflow import MlflowClient

    uri = f"sqlite:///{env['FEDFLOW_MLRUNS_DIR']}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_the_sweep_fails_because_two_points_failed_after_comparing_all_four(sweep_run):
    assert sweep_run["returncode"] != 0
    assert not sweep_run["leaked"], f"worker_binary processes left running: {sorted(sweep_run['leaked'])}"
    assert "2 of 4 grid points failed (the comparison of the others is logged)" in sweep_run["log"]
    assert [(r["point"], r["noise_multiplier"], r["num_clients"], r["status"]) for r in sweep_run["table"]] == [
        ("p00", "0.1", "8", "succeeded"), ("p01", "0.1", "400", "failed"),
        ("p02", "0.3", "8", "succeeded"), ("p03", "0.3", "400", "failed")]
    assert "exceeds the 1438 training examples" in sweep_run["table"][1]["error"]
    for row in (sweep_run["table"][0], sweep_run["table"][2]):
        assert 0 < float(row["final_test_accuracy"]) <= 1 and float(row["epsilon"]) > 0
        assert float(row["bits_per_parameter"]) < 8  # 4-bit quantisation of the tensors above 1,000 values


def test_every_point_is_a_mapped_task_instance_between_plan_and_compare(sweep_run):
    rows = airflow_db_rows(sweep_run["env"], "from airflow.models import TaskInstance",
                           "select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state, "
                           "TaskInstance.rendered_map_index).where(TaskInstance.dag_id == 'sweep_tiny')")
    assert sorted(row[:3] for row in rows) == [
        ["compare", -1, "failed"], ["plan", -1, "success"], ["run_point", 0, "success"], ["run_point", 1, "failed"],
        ["run_point", 2, "success"], ["run_point", 3, "failed"]]
    names = sorted(name for task, _, _, name in rows if task == "run_point")  # what the UI lists the points as
    assert names[0] == "p00 noise_multiplier=0.1, num_clients=8" and names[3].startswith("p03 ")


def test_point_runs_nest_under_the_parent_which_holds_the_comparison(sweep_run):
    c = mlflow_client(sweep_run["env"])
    parent_id = sweep_run["plan"]["parent_run_id"]
    parent = c.get_run(parent_id)
    assert parent.info.status == "FAILED"  # closed by compare, after logging
    assert parent.data.tags["fedflow.sweep"] == "tiny" and parent.data.tags["airflow.dag_id"] == "sweep_tiny"
    assert parent.data.tags["fedflow.points_failed"] == "2"
    assert {a.path for a in c.list_artifacts(parent_id, "comparison")} == {
        f"comparison/{n}" for n in ("comparison.csv", "comparison.md", "comparison.html", "accuracy_vs_epsilon.png",
                                    "accuracy_vs_bits.png", "curves_by_round.png")}
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    by_point = {r.data.tags["fedflow.sweep_point"]: r for r in children}
    assert sorted(by_point) == ["p00", "p01", "p02", "p03"]
    assert [by_point[p].info.status for p in sorted(by_point)] == ["FINISHED", "FAILED", "FINISHED", "FAILED"]
    assert by_point["p02"].data.params["noise_multiplier"] == "0.3" and by_point["p02"].data.params["rounds"] == "2"
    assert by_point["p00"].data.tags["airflow.run_id"] == parent.data.tags["airflow.run_id"]


def test_the_best_points_model_version_is_the_champion(sweep_run):
    c = mlflow_client(sweep_run["env"])
    done = [r for r in sweep_run["table"] if r["status"] == "succeeded"]
    best = max(done, key=lambda r: float(r["final_test_accuracy"]))
    champion = c.get_model_version_by_alias("e2e-sweep-digits", "champion")
    assert str(champion.version) == best["version"] and champion.run_id == best["mlflow_run_id"]
    tags = c.get_run(sweep_run["plan"]["parent_run_id"]).data.tags
    assert tags["fedflow.champion_point"] == best["point"] and tags["fedflow.champion_model_version"] == best["version"]
