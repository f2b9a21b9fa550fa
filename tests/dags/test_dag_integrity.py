"""Every DAG file parses cleanly, cheaply, and is wired as designed."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.config import MAX_CHUNKS

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((ROOT / "dags").glob("[!_]*.py"))
HEAVY_MODULES = ["tensorflow", "tensorflow_federated", "trainer", "mlflow", "great_expectations", "sklearn"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_parses_without_importing_heavy_libraries(dag_file):
    probe = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(dag_file)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_dagbag_has_no_import_errors_and_every_dag_is_documented(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG found"
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, dag_id
        assert dag.doc_md, dag_id
        assert dag.default_args.get("retries", 0) >= 1, dag_id
        for t in dag.tasks:
            assert t.execution_timeout is not None, f"{dag_id}.{t.task_id} has no execution_timeout"


def test_training_chunks_form_a_fixed_chain_in_the_gpu_pool_and_queue(dagbag):
    dag = dagbag.dags["federated_training"]
    chunks = [dag.get_task(f"train_chunk_{i:02d}") for i in range(MAX_CHUNKS)]
    for i, chunk in enumerate(chunks):
        assert (chunk.pool, chunk.queue) == ("gpu", "gpu")
        assert chunk.retries >= 1
        assert chunk.execution_timeout >= timedelta(hours=1)
        expected_upstream = "validate" if i == 0 else f"train_chunk_{i - 1:02d}"
        assert expected_upstream in chunk.upstream_task_ids
    final = dag.get_task("evaluate_and_register")
    assert final.trigger_rule == "none_failed"  # runs after skipped chunks, not after failed ones
    assert f"train_chunk_{MAX_CHUNKS - 1:02d}" in final.upstream_task_ids
    assert dag.get_task("stage").upstream_task_ids == {"resolve_config"}


def test_trigger_form_params_have_titles_sections_and_the_config_defaults(dagbag):
    from tasks.config import ExperimentConfig

    params = dagbag.dags["federated_training"].params
    defaults = ExperimentConfig().to_dict()
    assert set(params.keys()) == {*defaults, "overrides"}  # overrides: fields set exactly, over a recipe
    for name in params.keys():
        param = params.get_param(name)
        assert param.schema["title"] and param.schema["section"] and param.description, name
        assert params[name] == defaults.get(name, {})


@pytest.mark.parametrize(
    ("name", "value"),
    [("rounds", 0), ("partition", "bogus"), ("dirichlet_alpha", 0), ("clients_per_round", "ten"),
     ("experiment_name", "bad name!")],
)
def test_bad_trigger_params_are_rejected_naming_the_param(dagbag, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["federated_training"].params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
        params[name] = value


def test_the_data_dag_stages_and_validates_without_training_and_shows_only_data_params(dagbag):
    from tasks.config import ExperimentConfig

    dag = dagbag.dags["federated_data"]
    assert [t.task_id for t in dag.topological_sort()] == ["resolve_config", "stage", "validate", "finish"]
    params = dag.params
    data_fields = {n for n, s in ExperimentConfig.__dataclass_fields__.items() if s.metadata["section"] == "Data"}
    assert set(params.keys()) == data_fields | {"experiment_name"}
    assert params["experiment_name"] == "fedflow-data"


@pytest.mark.parametrize("dag_id", ["federated_training", "federated_data"])
def test_the_stage_task_announces_staged_data_through_the_asset_alias(dagbag, dag_id):
    from airflow.sdk import AssetAlias

    outlets = dagbag.dags[dag_id].get_task("stage").outlets
    assert outlets == [AssetAlias("fedflow-staged-data")]


def test_only_the_data_dag_announces_validated_data_so_training_never_triggers_itself(dagbag):
    from airflow.sdk import AssetAlias

    assert dagbag.dags["federated_data"].get_task("finish").outlets == [AssetAlias("fedflow-validated-data")]
    for dag_id in ("federated_training", "federated_training_on_new_data"):
        outlets = [o for t in dagbag.dags[dag_id].tasks for o in t.outlets]
        assert AssetAlias("fedflow-validated-data") not in outlets


def test_the_data_aware_training_dag_is_scheduled_on_validated_digits_with_the_training_tasks(dagbag):
    dag, manual = dagbag.dags["federated_training_on_new_data"], dagbag.dags["federated_training"]
    assert [a.uri for a in dag.timetable.asset_condition.objects] == ["fedflow://validated/digits"]
    assert set(dag.task_ids) == set(manual.task_ids)
    assert dag.params.keys() == manual.params.keys()


def test_a_run_triggered_by_new_data_trains_on_the_newest_announced_settings():
    from types import SimpleNamespace

    from dags._fedflow_common import _announced_data_settings

    def event(ts, **extra):
        return SimpleNamespace(timestamp=ts, extra=extra)

    events = {"validated/digits": [event(1, data_config={"num_clients": 8}), event(3, data_config={"num_clients": 20}),
                                   event(5, note="no settings")]}
    assert _announced_data_settings({"triggering_asset_events": events}) == {"num_clients": 20}
    assert _announced_data_settings({"triggering_asset_events": {}}) == {}
    assert _announced_data_settings({}) == {}


def test_announced_data_settings_override_the_params_and_shrink_clients_per_round_to_fit():
    from dags._fedflow_common import with_announced_data

    params = {"num_clients": 20, "clients_per_round": 10, "rounds": 40}
    assert with_announced_data(params, {}) == params
    assert with_announced_data(params, {"num_clients": 6}) == {"num_clients": 6, "clients_per_round": 6, "rounds": 40}
    assert with_announced_data(params, {"num_clients": 30})["clients_per_round"] == 10
