"""
### Federated training

Trains a model with **federated averaging** (TensorFlow Federated) on a data set partitioned across
simulated clients, and tracks everything in MLflow.

1. **resolve_config** validates the parameters below into one experiment config, frozen in
   `data/runs/<run id>/config.json`, and opens the run's MLflow run.
2. **stage** writes the data set as per-client Parquet shards with a manifest (content-addressed:
   the same settings reuse the same files) and announces new data as an asset event.
3. **validate** checks the shards (checksums, counts, client ids) and runs the Great Expectations
   suite of the data set's kind; bad data stops the run here, naming the check, clients and values.
4. **train_chunk_00 … train_chunk_09** each bring the run to the next `rounds_per_chunk` boundary in a
   separate TFF process (pool/queue `gpu`), resuming from the newest checkpoint; chunks the plan
   does not need are skipped. Metrics stream into MLflow with `step = round`.
5. **evaluate_and_register** evaluates the final model on the test split, logs it to MLflow and
   registers it (alias `candidate`).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

from dags._fedflow_common import (
    DAG_SETTINGS,
    experiment_params,
    resolve_task,
    stage,
    validate_task,
    with_mlflow_link,
)
from tasks.config import MAX_CHUNKS

CHUNK_TIMEOUT = timedelta(hours=24)  # the config's chunk_timeout_minutes is enforced inside the task


@dag(
    dag_id=Path(__file__).stem,
    schedule=None,
    tags=["fedflow", "training"],
    params=experiment_params(),
    doc_md=__doc__,
    **DAG_SETTINGS,
)
def federated_training():
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

    handle = resolve_task(training=True)()
    checked = validate_task(training=True)(handle, stage(handle))
    previous = checked
    for i in range(MAX_CHUNKS):
        chunk = with_mlflow_link(train_chunk.override(task_id=f"train_chunk_{i:02d}")(handle, i))
        previous >> chunk
        previous = chunk
    previous >> with_mlflow_link(evaluate_and_register(handle))


federated_training()
