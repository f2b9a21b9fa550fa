"""`make up` / `make trigger` / `make down` for real: MLflow's and Airflow's servers, a training run
triggered through the REST API with a JSON conf, checked through MLflow's REST API."""

from __future__ import annotations

import json
import re
import socket

import pytest

from tasks import airflow_api
from tests.conftest import worker_binaries
from tests.servers.conftest import DAG_ID, EXPERIMENT, alive, mlflow_get

pytestmark = pytest.mark.slow


def test_a_run_triggered_through_the_rest_api_trains_and_is_tracked_in_mlflow(live_servers):
    rc, out = live_servers.cli("tasks.trigger", DAG_ID, "--conf", json.dumps(EXPERIMENT), "--wait",
                               "--timeout", "600", "--poll", "2", log_name="trigger")
    assert rc == 0, out
    summary = json.loads(out[out.index("succeeded.") + len("succeeded."):])  # evaluate_and_register's value
    rounds = EXPERIMENT["rounds"]
    assert summary["rounds"] == rounds
    assert summary["tracking_uri"] == live_servers.mlflow_url  # the tasks logged over HTTP

    run = mlflow_get(live_servers, "runs/get", run_id=summary["mlflow_run_id"])["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["rounds"] == str(rounds) and params["num_clients"] == str(EXPERIMENT["num_clients"])
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["airflow.dag_id"] == DAG_ID
    for metric in ("train_loss", "train_accuracy", "round_seconds"):
        history = mlflow_get(live_servers, "metrics/get-history", run_id=summary["mlflow_run_id"],
                             metric_key=metric)["metrics"]
        assert sorted(m["step"] for m in history) == list(range(1, rounds + 1)), metric  # each round once
    evals = mlflow_get(live_servers, "metrics/get-history", run_id=summary["mlflow_run_id"], metric_key="test_accuracy")
    assert sorted(m["step"] for m in evals["metrics"]) == list(range(EXPERIMENT["eval_every"], rounds + 1,
                                                                      EXPERIMENT["eval_every"]))

    version = mlflow_get(live_servers, "registered-models/alias", name=summary["registered_model_name"],
                         alias="candidate")["model_version"]
    assert version["version"] == summary["version"]
    assert version["run_id"] == summary["mlflow_run_id"]

    # The "MLflow run" extra link points at this MLflow server's page of the run.
    api = live_servers.api()
    run_id = out.split("Triggered federated_training run ")[1].split(" ")[0]
    links = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{airflow_api.quote(run_id)}"
                               "/taskInstances/evaluate_and_register/links")["extra_links"]
    assert links["MLflow run"] == (f"{live_servers.mlflow_url}/#/experiments/{run['info']['experiment_id']}"
                                   f"/runs/{summary['mlflow_run_id']}")
    assert api.dag_run(DAG_ID, run_id)["conf"] == EXPERIMENT


@pytest.mark.parametrize(("conf", "param", "message"), [
    ({"rounds": -1}, "rounds", "less than the minimum of 1"),
    ({"dataset": "nope"}, "dataset", "is not one of"),
])
def test_a_conf_outside_the_params_schema_is_refused_with_400_naming_the_param(live_servers, conf, param, message):
    api = live_servers.api()
    runs_before = api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["total_entries"]
    with pytest.raises(airflow_api.ApiError) as refused:
        api.trigger(DAG_ID, {**EXPERIMENT, **conf})
    assert refused.value.status == 400
    assert f"Invalid input for param {param}: " in refused.value.detail and message in refused.value.detail

    rc, out = live_servers.cli("tasks.trigger", DAG_ID, "--conf", json.dumps(conf), "--wait", log_name=f"refused-{param}")
    assert rc == 2, out
    assert f"HTTP 400): Invalid input for param {param}:" in out and "Failed validating" not in out
    assert api.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["total_entries"] == runs_before


def test_a_failed_run_exits_1_naming_the_failed_task_and_its_error(live_servers):
    # Airflow's schema does not forbid unknown keys; the first task refuses them (no retries).
    rc, out = live_servers.cli("tasks.trigger", DAG_ID, "--conf", '{"roundz": 4}', "--wait", "--timeout", "300",
                               "--poll", "1", log_name="trigger-failing")
    assert rc == 1, out
    assert "failed. Failed tasks: resolve_config (upstream_failed: " in out
    assert re.search(r"resolve_config \(try 1\): \w+: Unknown parameter\(s\) \['roundz'\]", out), out


def test_up_refuses_to_start_twice_or_on_a_taken_port(live_servers, tmp_path):
    rc, out = live_servers.cli("tasks.servers", "up", log_name="up-again")
    assert rc == 1
    assert "already running" in out and "api-server (pid" in out and "make down" in out

    # Another AIRFLOW_HOME on the same ports: refused before anything starts, naming the port and the fix.
    other = {**live_servers.env, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    port = live_servers.env["FEDFLOW_AIRFLOW_PORT"]
    rc, out = live_servers.cli("tasks.servers", "up", log_name="up-port", env=other)
    assert rc == 1
    assert f"Port {port} on 127.0.0.1 (for Airflow) is already in use" in out and "FEDFLOW_AIRFLOW_PORT" in out
    assert not (tmp_path / "airflow" / "servers.json").exists()


def test_status_lists_every_component(live_servers):
    rc, out = live_servers.cli("tasks.servers", "status", "--json", log_name="status")
    assert rc == 0, out
    records = json.loads(out)
    assert [r["name"] for r in records] == ["mlflow", "api-server", "scheduler", "dag-processor", "triggerer"]
    assert {r["port"] for r in records if r["port"]} == {int(live_servers.env["FEDFLOW_AIRFLOW_PORT"]),
                                                          int(live_servers.env["FEDFLOW_MLFLOW_PORT"])}


def test_down_stops_every_process_up_started(live_servers):  # keep last: it stops the package's servers
    started = live_servers.processes()
    assert len(started) >= 5

    out = live_servers.stop()

    assert out.count(" stopped") == 5, out
    assert not (live_servers.home / "servers.json").exists()
    still_running = [p.pid for p in started if alive(p)]
    assert not still_running, out
    assert not worker_binaries() - live_servers.worker_binaries_before
    for port in (live_servers.env["FEDFLOW_AIRFLOW_PORT"], live_servers.env["FEDFLOW_MLFLOW_PORT"]):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", int(port)))  # free again
    rc, out = live_servers.cli("tasks.servers", "status", log_name="status-after")
    assert rc == 3 and "No fedflow servers running" in out
