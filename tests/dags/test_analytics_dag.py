"""The federated_analytics DAG: its tasks in order, the TFF step in the gpu pool and queue, and a trigger form
that is AnalyticsConfig's schema (with the analytics recipes to pick from)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "federated_analytics.py"))
    assert bag.import_errors == {}
    return bag.dags["federated_analytics"]


def test_the_analytics_dag_stages_validates_measures_logs_and_checks_in_order(dag):
    assert [t.task_id for t in dag.topological_sort()] == [
        "resolve_config",
        "stage",
        "validate",
        "heavy_hitters",
        "log_results",
        "reference_check",
    ]
    measure = dag.get_task("heavy_hitters")
    assert (measure.pool, measure.queue) == ("gpu", "gpu") and measure.retries >= 1
    assert all(t.execution_timeout is not None for t in dag.tasks)


def test_the_trigger_form_is_the_analytics_config_with_its_defaults_and_the_analytics_recipes(dag):
    from tasks.analytics_config import AnalyticsConfig

    params, defaults = dag.params, AnalyticsConfig().to_dict()
    assert set(params.keys()) == set(defaults)
    for name in params.keys():
        schema = params.get_param(name).schema
        assert schema["title"] and schema["section"] and params[name] == defaults[name], name
    assert params.get_param("recipe").schema["enum"] == ["none", "private_heavy_hitters"]


@pytest.mark.parametrize(("name", "value"), [("capacity", 0), ("secure_sum_bitwidth", 63), ("plays", "Hamlet!")])
def test_bad_trigger_params_are_rejected_naming_the_param(dag, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}"):
        params[name] = value
