"""Pieces the fedflow DAG files share: the trigger-form params and the resolve/stage/validate tasks.

A module of task factories, not a DAG (its name starts with ``_``). Nothing heavy at import time:
the step logic (``tasks.steps``) is imported inside the tasks.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetAlias, BaseOperatorLink, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from tasks.config import param_schemas

# Every newly staged data set is announced as an event of the asset of its source (``fedflow://
# staged/<dataset>[/<file>]``) through this alias; schedule a DAG on such an asset to run on new data.
STAGED_DATA = AssetAlias("fedflow-staged-data")


class MlflowRunLink(BaseOperatorLink):
    """The "MLflow run" button of a fedflow task: the run's page in the MLflow UI. Airflow 3 computes it
    on the worker when the task ends and keeps it in XCom; the class is registered by
    ``plugins/fedflow_links.py`` so the UI can show it."""

    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:  # noqa: ARG002 - the interface's signature
        from tasks import tracking
        from tasks.paths import RunPaths

        return tracking.ui_url(RunPaths.for_run(ti_key.run_id)) or ""


def with_mlflow_link(task_output):
    """Adds the "MLflow run" extra link to the task behind a TaskFlow call's output; returns the output."""
    task_output.operator.operator_extra_links = [MlflowRunLink()]
    return task_output


def mark_mlflow_run_failed(context) -> None:
    """A task failed with no retries left: the run's MLflow run must not stay RUNNING."""
    from tasks import steps

    steps.mark_failed(context["run_id"])


# What every fedflow DAG shares: never back-filled, a few runs at once, failures close the MLflow run.
DAG_SETTINGS = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "max_active_runs": 4,
    "default_args": {"retries": 1, "retry_delay": timedelta(seconds=15), "on_failure_callback": mark_mlflow_run_failed},
}


def experiment_params(sections: set[str] | None = None, **defaults) -> dict[str, Param]:
    """Trigger-form params from the config's schema: every field, or those of ``sections`` plus the
    fields given new ``defaults``."""
    params = {}
    for name, schema in param_schemas().items():
        if sections is None or schema["section"] in sections or name in defaults:
            params[name] = Param(**{**schema, "default": defaults.get(name, schema["default"])})
    return params


def resolve_task(*, training: bool):
    @task(task_id="resolve_config", execution_timeout=timedelta(minutes=5))
    def resolve_config() -> dict:
        from tasks import steps

        ctx = get_current_context()
        try:
            return steps.resolve(ctx["params"], dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"], training=training)
        except steps.ConfigError as e:  # a retry cannot fix the user's input
            raise AirflowFailException(str(e)) from e

    return resolve_config


@task(execution_timeout=timedelta(hours=2), outlets=[STAGED_DATA])
def stage(handle: dict) -> dict:
    """Stages the data set (or reuses an identical stage); announces new data as an asset event."""
    from tasks import steps

    try:
        staged = steps.stage(handle)
    except steps.StageInputError as e:  # the source or the partition settings must change first
        raise AirflowFailException(str(e)) from e
    if not staged["reused"]:
        events = get_current_context()["outlet_events"]
        events[STAGED_DATA].add(
            Asset(uri=staged["asset_uri"], name=staged["asset_uri"].removeprefix("fedflow://")),
            extra={k: staged[k] for k in ("path", "fingerprint", "kind", "clients", "train_examples")},
        )
    return staged


def validate_task(*, training: bool):
    @task(task_id="validate", execution_timeout=timedelta(hours=1))
    def validate(handle: dict, staged: dict) -> dict:  # noqa: ARG001 - ``staged`` orders the tasks
        from tasks import steps

        try:
            return steps.validate(handle, training=training)
        except steps.DataValidationError as e:  # a retry cannot fix the data
            raise AirflowFailException(str(e)) from e

    return validate

