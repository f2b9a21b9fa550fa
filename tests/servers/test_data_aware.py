"""Data-aware scheduling with the real scheduler: new validated data from the data DAG starts
`federated_training_on_new_data`, which trains on exactly that data (its staging reused)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.servers.conftest import EXPERIMENT

pytestmark = pytest.mark.slow
CONSUMER = "federated_training_on_new_data"
# Settings no other test in this package stages, so the data DAG's staging is new and announced.
DATA = {"dataset": "digits", "num_clients": 6, "min_examples_per_client": 10, "partition": "iid", "seed": 11}
# 6 clients: the consumer's default clients_per_round (10) shrinks to fit instead of failing the run.


def test_new_validated_data_triggers_training_on_exactly_that_data(live_servers):
    api = live_servers.api()
    for dag_id in ("federated_data", CONSUMER):
        api.wait_for_dag(dag_id, timeout_s=180)
        api.unpause(dag_id)
    runs_before = {r["dag_run_id"] for r in api.request("GET", f"/api/v2/dags/{CONSUMER}/dagRuns")["dag_runs"]}

    data_run = api.trigger("federated_data", DATA)
    assert api.wait("federated_data", data_run["dag_run_id"], timeout_s=600)["state"] == "success"
    staged = api.xcom("federated_data", data_run["dag_run_id"], "stage")
    assert staged["reused"] is False

    deadline, new = time.monotonic() + 180, []
    while not new and time.monotonic() < deadline:  # the scheduler creates the run from the asset event
        runs = api.request("GET", f"/api/v2/dags/{CONSUMER}/dagRuns")["dag_runs"]
        new = [r for r in runs if r["dag_run_id"] not in runs_before]
        time.sleep(2)
    assert len(new) == 1, "no run of the data-aware DAG was created from the asset event"
    assert new[0]["run_type"] == "asset_triggered"
    # The consumer runs with its defaults (40 rounds): shorten nothing here, just check its first tasks
    # trained on the announced data, then stop it.
    consumer_run = new[0]["dag_run_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        stage = api.request("GET", f"/api/v2/dags/{CONSUMER}/dagRuns/{consumer_run}/taskInstances/stage")
        if stage["state"] in ("success", "failed", "upstream_failed"):
            break
        time.sleep(2)
    assert stage["state"] == "success"
    reused = api.xcom(CONSUMER, consumer_run, "stage")
    assert reused["reused"] is True and reused["fingerprint"] == staged["fingerprint"]
    handle = api.xcom(CONSUMER, consumer_run, "resolve_config")
    config = json.loads(Path(handle["run_dir"], "config.json").read_text())
    assert {k: config[k] for k in DATA} == DATA
    assert config["clients_per_round"] == DATA["num_clients"]
    assert config["rounds"] != EXPERIMENT["rounds"]  # the rest are the DAG's defaults
    api.request("PATCH", f"/api/v2/dags/{CONSUMER}/dagRuns/{consumer_run}", body={"state": "failed"})
    api.request("PATCH", f"/api/v2/dags/{CONSUMER}", body={"is_paused": True})
