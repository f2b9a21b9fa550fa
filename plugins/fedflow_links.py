"""Registers fedflow's operator extra links with Airflow, so serialized DAGs can name them and the UI
shows them: "MLflow run" on the training and registration tasks (``dags/_fedflow_common.py``)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from dags._fedflow_common import MlflowRunLink


class FedflowPlugin(AirflowPlugin):
    name = "fedflow"
    operator_extra_links = [MlflowRunLink()]
