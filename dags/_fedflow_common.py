"""Pieces the fedflow DAG files share: the trigger-form params and the resolve/stage/validate tasks.

A module of task factories, not a DAG (its name starts with ``_``). Nothing heavy at import time:
the step logic (``tasks.steps``) is imported inside the tasks.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetAlias, BaseOperatorLink, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tasks.config import MAX_CHUNKS
from tasks.config_schema import param_schemas

CHUNK_TIMEOUT = timedelta(hours=24)  # the config's chunk_timeout_minutes is enforced inside the task

# Every newly staged data set is announced as an event of the asset of its source (``fedflow://
# staged/<dataset>[/<file>]``) through this alias; schedule a DAG on such an asset to run on new data.
STAGED_DATA = AssetAlias("fedflow-staged-data")
# The data DAG announces newly staged data that also passed validation as an event of ``fedflow://
# validated/<dataset>[/<file>]`` (extra: the data settings that staged it). Training DAGs consume these:
# the training DAG's own staging announces only ``staged``, so training never triggers itself.
VALIDATED_DATA = AssetAlias("fedflow-validated-data")
VALIDATED_DIGITS = Asset(uri="fedflow://validated/digits", name="validated/digits")


class MlflowRunLink(BaseOperatorLink):
    """The "MLflow run" button of a fedflow task: the run's page in the MLflow UI. Airflow 3 computes it
    on the worker when the task ends and keeps it in XCom; the class is registered by
    ``plugins/fedflow_links.py`` so the UI can show it."""

    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:  # noqa: ARG002 - the interface's signature
        from tasks import tracking
        from tasks.paths import RunPaths

        return tracking.ui_url(RunPaths.for_run(ti_key.dag_id, ti_key.run_id)) or ""


def with_mlflow_link(task_output):
    """Adds the "MLflow run" extra link to the task behind a TaskFlow call's output; returns the output."""
    task_output.operator.operator_extra_links = [MlflowRunLink()]
    return task_output


def mark_mlflow_run_failed(context) -> None:
    """A task failed with no retries left: the run's MLflow run must not stay RUNNING."""
    from tasks import steps

    steps.mark_failed(context["dag"].dag_id, context["run_id"])


# What every fedflow DAG shares: never back-filled, a few runs at once, failures close the MLflow run.
DAG_SETTINGS = {
    "start_date": pendulum.datetime(2026, 1, 1, tz="UTC"),
    "catchup": False,
    "max_active_runs": 4,
    "default_args": {"retries": 1, "retry_delay": timedelta(seconds=15), "on_failure_callback": mark_mlflow_run_failed},
}


def record_attempt(handle: dict) -> None:
    """Lineage: tags the run's MLflow run with this task and its try number."""
    from tasks import steps

    ti = get_current_context()["ti"]
    steps.record_attempt(handle, ti.task_id, ti.try_number)


def experiment_params(sections: set[str] | None = None, **defaults) -> dict[str, Param]:
    """Trigger-form params from the config's schema: every field, or those of ``sections`` plus the
    fields given new ``defaults``."""
    from tasks import recipes

    params = {}
    for name, schema in param_schemas().items():
        if sections is None or schema["section"] in sections or name in defaults:
            if name == "recipe":  # a choice among the committed recipes, read when the DAG file is parsed
                schema = {**schema, "enum": [recipes.NO_RECIPE, *recipes.names("training")]}
            params[name] = Param(**{**schema, "default": defaults.get(name, schema["default"])})
    if "recipe" in params:
        params[recipes.OVERRIDES] = Param(
            {}, type="object", section="Recipe", title="Set exactly",
            description='Settings applied last, exactly as given, e.g. {"server_momentum": 0.0}: a field the form '
            "leaves at its default cannot undo a recipe's value, this can.")
    return params


def _announced_data_settings(ctx) -> dict:
    """The data settings in the newest ``validated`` asset event that triggered this run ({} when the
    run was triggered otherwise)."""
    events = [event for events in (ctx.get("triggering_asset_events") or {}).values() for event in events]
    events = [e for e in events if "data_config" in (e.extra or {})]
    if not events:
        return {}
    newest = max(events, key=lambda e: e.timestamp)
    return dict(newest.extra["data_config"])


def with_announced_data(params: dict, announced: dict) -> dict:
    """The run's params with the data settings of the asset event that triggered it (train on exactly
    the announced data). The default ``clients_per_round`` shrinks to fit a smaller announced data set
    rather than fail the scheduled run."""
    if not announced:
        return dict(params)
    merged = {**params, **announced}
    if merged.get("clients_per_round", 0) > merged.get("num_clients", 0) > 0:
        merged["clients_per_round"] = merged["num_clients"]
    return merged


def resolve_task(*, training: bool):
    @task(task_id="resolve_config", execution_timeout=timedelta(minutes=5))
    def resolve_config() -> dict:
        from tasks import steps

        ctx = get_current_context()
        params = with_announced_data(ctx["params"], _announced_data_settings(ctx))
        try:
            return steps.resolve(params, dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"], training=training,
                                 tags={"airflow.task_id": ctx["ti"].task_id,
                                       "airflow.try_number": str(ctx["ti"].try_number)})
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


@task(execution_timeout=timedelta(minutes=5), outlets=[VALIDATED_DATA])
def finish_data(handle: dict, staged: dict, checked: dict) -> dict:  # noqa: ARG001 - ``checked`` orders the tasks
    """Closes the data run's MLflow run; announces newly staged, validated data to training DAGs."""
    from tasks import steps

    finished = steps.finish_data_run(handle)
    if not staged["reused"]:
        uri = staged["asset_uri"].replace("fedflow://staged/", "fedflow://validated/", 1)
        get_current_context()["outlet_events"][VALIDATED_DATA].add(
            Asset(uri=uri, name=uri.removeprefix("fedflow://")),
            extra={"data_config": steps.data_settings(handle),
                   **{k: staged[k] for k in ("path", "fingerprint", "kind", "clients", "train_examples")}},
        )
    return finished


def training_chain() -> None:
    """The tasks of a training DAG: resolve_config -> stage -> validate -> ``train_chunk_00..09`` (pool
    and queue ``gpu``, one TFF process each, resuming from the newest checkpoint; chunks the plan does
    not need are skipped) -> ``evaluate_and_register``."""

    @task(pool="gpu", queue="gpu", retries=2, retry_delay=timedelta(seconds=30), execution_timeout=CHUNK_TIMEOUT)
    def train_chunk(handle: dict, chunk_index: int) -> dict:
        from tasks import steps

        ti = get_current_context()["ti"]
        outcome = steps.train_chunk(handle, chunk_index, attempt=(ti.task_id, ti.try_number))
        if outcome["status"] == "not-needed":
            raise AirflowSkipException(f"The plan has {outcome['chunks']} chunk(s); chunk {chunk_index} is not needed")
        return outcome

    @task(trigger_rule="none_failed", execution_timeout=timedelta(hours=1))
    def evaluate_and_register(handle: dict) -> dict:
        from tasks import steps

        record_attempt(handle)
        return steps.evaluate_and_register(handle)

    @task(execution_timeout=timedelta(minutes=10))
    def reference_check(handle: dict, registered: dict) -> dict:  # noqa: ARG001 - ``registered`` orders the tasks
        """A recipe run: the tutorial's claims against this run (a table artifact and tags in MLflow)."""
        from tasks import steps

        outcome = steps.reference_check(handle)
        if outcome["status"] == "no-recipe":
            raise AirflowSkipException("No recipe: nothing to check against a tutorial")
        if outcome["status"] == "sweep-recipe":
            raise AirflowSkipException(outcome["message"])
        return outcome

    @task(pool="gpu", queue="gpu", execution_timeout=CHUNK_TIMEOUT)
    def warm_start(handle: dict) -> dict:
        """Runs with warm_start only: the registered model by alias, pretrained and registered first when the
        alias is missing and pretrain_plays is set (tasks/warm_start.py); downloaded for the chunks."""
        from tasks import warm_start as warm

        try:
            return warm.prepare(handle)
        except warm.WarmStartError as e:  # the config or the registry must change first
            raise AirflowFailException(str(e)) from e

    resolved = resolve_task(training=True)()
    validated = validate_task(training=True)(resolved, stage(resolved))
    warmed = with_mlflow_link(warm_start(resolved))
    validated >> warmed
    previous = [validated, warmed]
    for i in range(MAX_CHUNKS):
        chunk = with_mlflow_link(train_chunk.override(task_id=f"train_chunk_{i:02d}")(resolved, i))
        previous >> chunk
        previous = chunk
    registered = with_mlflow_link(evaluate_and_register(resolved))
    previous >> registered
    reference_check(resolved, registered)


def validate_task(*, training: bool):
    @task(task_id="validate", execution_timeout=timedelta(hours=1))
    def validate(handle: dict, staged: dict) -> dict:  # noqa: ARG001 - ``staged`` orders the tasks
        from tasks import steps

        try:
            return steps.validate(handle, training=training)
        except steps.DataValidationError as e:  # a retry cannot fix the data
            raise AirflowFailException(str(e)) from e

    return validate

