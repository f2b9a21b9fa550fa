"""
### Federated data: stage and validate a data set

Stages a federated data set into per-client Parquet shards and validates it, without training: to
prepare data ahead of experiments, to inspect a new source (h5 ClientData, LEAF JSON, a CSV/Parquet
table, the Shakespeare plays, MovieLens-100K), or to schedule training on new data.

1. **resolve_config** checks the data parameters and opens an MLflow run (experiment `fedflow-data`).
2. **stage** writes the shards and manifest (content-addressed: the same source and settings reuse the
   same files) and announces newly staged data as an event of the asset `fedflow://staged/<dataset>`.
3. **validate** runs the structural checks and the Great Expectations suite of the data set's kind;
   the one-screen summary is in the task log, the Data Docs and the report in the MLflow run.
4. **finish** closes the MLflow run and announces newly staged data that passed validation as an
   event of `fedflow://validated/<dataset>` (with the data settings), on which training DAGs such as
   `federated_training_on_new_data` are scheduled.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag

from dags._fedflow_common import DAG_SETTINGS, experiment_params, finish_data, resolve_task, stage, validate_task


@dag(
    dag_id=Path(__file__).stem,
    schedule=None,
    tags=["fedflow", "data"],
    params=experiment_params({"Data"}, experiment_name="fedflow-data"),
    doc_md=__doc__,
    **DAG_SETTINGS,
)
def federated_data():
    handle = resolve_task(training=False)()
    staged = stage(handle)
    finish_data.override(task_id="finish")(handle, staged, validate_task(training=False)(handle, staged))


federated_data()
