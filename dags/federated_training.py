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
   **warm_start** (runs with `warm_start` only; otherwise it does nothing) looks the registered model
   `models:/<name>@<alias>` up in MLflow; when the alias is missing and `pretrain_plays` is set, it
   pretrains the model centrally on those plays, registers it under the alias and uses it; the
   version is downloaded into the run directory and round 0 starts from its weights.
4. **train_chunk_00 … train_chunk_09** each bring the run to the next `rounds_per_chunk` boundary in a
   separate TFF process (pool/queue `gpu`), resuming from the newest checkpoint; chunks the plan
   does not need are skipped. Metrics stream into MLflow with `step = round`.
5. **evaluate_and_register** evaluates the final model on the test split, logs it to MLflow and
   registers it (alias `candidate`).
6. **reference_check** (recipe runs only; skipped otherwise) compares the run with the claims of the
   TFF tutorial the recipe reproduces: a pass/fail table and tags on the MLflow run.

Pick a **recipe** (section Recipe) to run a TFF tutorial as committed in `recipes/<name>.yaml`; the
params you change from their defaults override it.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag

from dags._fedflow_common import DAG_SETTINGS, experiment_params, training_chain


@dag(
    dag_id=Path(__file__).stem,
    schedule=None,
    tags=["fedflow", "training"],
    params=experiment_params(),
    doc_md=__doc__,
    **DAG_SETTINGS,
)
def federated_training():
    training_chain()


federated_training()
