"""
### Federated training

Trains a model with **federated averaging** (TensorFlow Federated) on a data set partitioned across
simulated clients, and tracks everything in MLflow.

1. **resolve_config** validates the parameters below into one experiment config, frozen in
   `data/runs/<run id>/config.json`, and opens the run's MLflow run.
2. **stage** writes the data set as per-client Parquet shards with a manifest (content-addressed:
   the same settings reuse the same files).
3. **validate** checks the shards (checksums, counts) and runs a Great Expectations suite; bad data
   stops the run here.
4. **train_chunk_00 … train_chunk_09** each bring the run to the next `rounds_per_chunk` boundary in a
   separate TFF process (pool/queue `gpu`), resuming from the newest checkpoint; chunks the plan
   does not need are skipped. Metrics stream into MLflow with `step = round`.
5. **evaluate_and_register** evaluates the final model on the test split, logs it to MLflow and
   registers it (alias `candidate`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from tasks.config import MAX_CHUNKS, param_schemas

CHUNK_TIMEOUT = timedelta(hours=24)  # the config's chunk_timeout_minutes is enforced inside the task


def _mark_mlflow_run_failed(context) -> None:
    """A task failed with no retries left: the run's MLflow run must not stay RUNNING."""
    from tasks import steps

    steps.mark_failed(context["run_id"])


@dag(
    dag_id=Path(__file__).stem,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    tags=["fedflow", "training"],
    default_args={
        "retries": 1,
        "retry_delay": timedelta(seconds=15),
        "on_failure_callback": _mark_mlflow_run_failed,
    },
    params={name: Param(**schema) for name, schema in param_schemas().items()},
    doc_md=__doc__,
)
def federated_training():
    @task(execution_timeout=timedelta(minutes=5))
    def resolve_config() -> dict:
        from tasks import steps

        ctx = get_current_context()
        try:
            return steps.resolve(ctx["params"], dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"])
        except steps.ConfigError as e:  # a retry cannot fix the user's input
            raise AirflowFailException(str(e)) from e

    @task(execution_timeout=timedelta(hours=2))
    def stage(handle: dict) -> dict:
        from tasks import steps

        return steps.stage(handle)

    @task(execution_timeout=timedelta(hours=1))
    def validate(handle: dict, staged: dict) -> dict:  # noqa: ARG001 - ``staged`` orders the tasks
        from tasks import steps

        try:
            return steps.validate(handle)
        except steps.DataValidationError as e:  # a retry cannot fix the data
            raise AirflowFailException(str(e)) from e

    @task(pool="gpu", queue="gpu", retries=2, retry_delay=timedelta(seconds=30), execution_timeout=CHUNK_TIMEOUT)
    def train_chunk(handle: dict, chunk_index: int) -> dict:
        from tasks import steps

        outcome = steps.train_chunk(handle, chunk_index)
        if outcome["status"] == "not-needed":
            raise AirflowSkipException(f"The plan has {outcome['chunks']} chunk(s); chunk {chunk_index} is not needed")
        return outcome

    @task(trigger_rule="none_failed", execution_timeout=timedelta(hours=1))
    def evaluate_and_register(handle: dict) -> dict:
        from tasks import steps

        return steps.evaluate_and_register(handle)

    handle = resolve_config()
    checked = validate(handle, stage(handle))
    previous = checked
    for i in range(MAX_CHUNKS):
        chunk = train_chunk.override(task_id=f"train_chunk_{i:02d}")(handle, i)
        previous >> chunk
        previous = chunk
    previous >> evaluate_and_register(handle)


federated_training()
