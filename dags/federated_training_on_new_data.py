"""
### Federated training on new data (data-aware schedule)

Runs when the `federated_data` DAG has staged **new** digits data that passed validation (the asset
`fedflow://validated/digits`): it trains on exactly that data, with the data settings carried by the
asset event and the other parameters at their defaults (or as set below when triggered by hand).
Staging is reused, not repeated. The tasks are those of `federated_training`.

To train on new data of another source, copy this file and schedule it on that source's asset, e.g.
`fedflow://validated/h5/<file>-<hash>` as printed by the data DAG's `finish` task.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import dag

from dags._fedflow_common import DAG_SETTINGS, VALIDATED_DIGITS, experiment_params, training_chain


@dag(
    dag_id=Path(__file__).stem,
    schedule=[VALIDATED_DIGITS],
    tags=["fedflow", "training", "data-aware"],
    params=experiment_params(),
    doc_md=__doc__,
    **DAG_SETTINGS,
)
def federated_training_on_new_data():
    training_chain()


federated_training_on_new_data()
