"""The sweep DAGs: one per sweep file, wired plan -> mapped run_point (gpu) -> compare (all_done)."""

from __future__ import annotations

import copy
import shutil
from datetime import timedelta

import pytest

from tests.conftest import ROOT

SWEEPS = ROOT / "sweeps"


def sweep_dagbag(sweeps_dir, monkeypatch, recipes_dir=None):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FEDFLOW_SWEEPS_DIR", str(sweeps_dir))
    if recipes_dir is not None:
        monkeypatch.setenv("FEDFLOW_RECIPES_DIR", str(recipes_dir))
    return DagBag(dag_folder=str(ROOT / "dags" / "federated_sweep.py"))


@pytest.fixture(scope="module")
def committed():
    with pytest.MonkeyPatch.context() as mp:
        yield sweep_dagbag(SWEEPS, mp)


def test_every_committed_sweep_file_has_its_dag_with_the_files_schedule(committed):
    from tasks import sweep

    assert committed.import_errors == {}
    recipe_sweeps = [f"sweep_recipe_{p.stem}" for p in sweep.recipe_sweep_files()]
    assert recipe_sweeps  # the sweep recipes (recipes/*.yaml with a grid) have their DAGs too
    assert sorted(committed.dags) == sorted([*(f"sweep_{p.stem}" for p in SWEEPS.glob("*.yaml")), *recipe_sweeps])
    compression = committed.dags["sweep_recipe_compression"]
    assert compression.params["recipe_variant"] == "default" and "recipe" in compression.tags
    nightly = committed.dags["sweep_nightly_dp_compression"]
    assert nightly.timetable.expression == "0 0 * * *"
    assert nightly.start_date is None and nightly.catchup is False  # waits for the next night, no catch-up
    assert sweep.load(SWEEPS / "nightly_dp_compression.yaml").description in nightly.doc_md


def test_points_are_mapped_gpu_tasks_between_plan_and_an_all_done_compare(committed):
    dag = committed.dags["sweep_nightly_dp_compression"]
    assert [t.task_id for t in dag.topological_sort()] == ["plan", "run_point", "compare"]
    point = dag.get_task("run_point")
    assert (point.pool, point.queue) == ("gpu", "gpu") and point.retries >= 1
    assert point.execution_timeout >= timedelta(hours=1)
    assert type(point).__name__.endswith("MappedOperator")  # one instance per point
    assert dag.get_task("compare").trigger_rule == "all_done"  # compares after failed points too
    callback = point.on_failure_callback
    callbacks = callback if isinstance(callback, list) else [callback]
    assert [c.__name__ for c in callbacks] == ["mark_sweep_run_failed"]  # not the parent-closing shared one


def test_trigger_params_limit_the_points_and_reject_negative_counts(committed):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(committed.dags["sweep_nightly_dp_compression"].params)
    assert params["max_points"] == 0 and params["overrides"] == {}
    with pytest.raises(ParamValidationError, match="Invalid input for param max_points"):
        params["max_points"] = -1


def test_an_invalid_sweep_file_gets_an_unscheduled_dag_showing_the_error_and_hides_no_other(tmp_path, monkeypatch):
    shutil.copy(SWEEPS / "nightly_dp_compression.yaml", tmp_path)
    (tmp_path / "broken.yaml").write_text("description: x\nschedule: '@daily'\nbase: {}\ngrid: {noise: [1]}\n")
    bag = sweep_dagbag(tmp_path, monkeypatch, recipes_dir=tmp_path / "no-recipes")
    assert bag.import_errors == {}
    assert set(bag.dags) == {"sweep_nightly_dp_compression", "sweep_broken"}
    broken = bag.dags["sweep_broken"]
    assert broken.schedule is None and "invalid" in broken.tags
    assert "unknown experiment field 'noise'" in broken.doc_md
