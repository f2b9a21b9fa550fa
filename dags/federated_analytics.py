"""
### Federated analytics: private heavy hitters

Finds the most frequent words of a population without collecting its text, as TensorFlow Federated's
**private heavy hitters** tutorial does: each client — a speaking role of a Shakespeare play — encodes its
words into an Invertible Bloom Lookup Table (`tff.analytics.heavy_hitters.iblt.build_iblt_computation`); the
sketches are summed (with a simulated secure sum) and the server decodes the words and their counts.

1. **resolve_config** validates the parameters below, counts the plays' speaking roles, freezes the config
   in `data/runs/<run id>/` and opens the run's MLflow run (experiment `fedflow-analytics`).
2. **stage** and **validate**: the plays as per-client Parquet shards, with the same staging and checks as
   training (identical stages are reused; new data is announced as an asset event).
3. **heavy_hitters** runs the computation in a TFF process (pool/queue `gpu`): words whitespace-split,
   case-folded, punctuation-only tokens dropped. It also computes the exact histogram the sketch must
   decode, and, with **dp**, the tutorial's central DP release (Laplace noise of scale m / ε, words kept at
   noisy counts >= τ); with **counter_check**, it runs every word of every client against a Counter.
4. **log_results**: metrics, the tables (`heavy_hitters/heavy_hitters.{csv,md,html}`, DP release beside it)
   and a bar chart (`heavy_hitters/heavy_hitters.png`) in MLflow.
5. **reference_check** (recipe runs only): the tutorial's claims against this run.

Pick the recipe **private_heavy_hitters** (section Recipe) for the tutorial's settings, or run it with
`make run RECIPE=private_heavy_hitters`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from dags._fedflow_common import CHUNK_TIMEOUT, DAG_SETTINGS, stage, validate_task, with_mlflow_link


def analytics_params() -> dict[str, Param]:
    """Trigger-form params from AnalyticsConfig's schema; the recipe is a choice among the analytics recipes."""
    from tasks import recipes
    from tasks.analytics_config import param_schemas

    params = {}
    for name, schema in param_schemas().items():
        if name == "recipe":
            schema = {**schema, "enum": [recipes.NO_RECIPE, *recipes.names("analytics")]}
        params[name] = Param(**schema)
    return params


@task(execution_timeout=timedelta(minutes=5))
def resolve_config() -> dict:
    from tasks import analytics

    ctx = get_current_context()
    try:
        return analytics.resolve(
            ctx["params"],
            dag_id=ctx["dag"].dag_id,
            run_id=ctx["run_id"],
            tags={"airflow.task_id": ctx["ti"].task_id, "airflow.try_number": str(ctx["ti"].try_number)},
        )
    except analytics.ConfigError as e:  # a retry cannot fix the user's input
        raise AirflowFailException(str(e)) from e


@task(pool="gpu", queue="gpu", retries=2, retry_delay=timedelta(seconds=30), execution_timeout=CHUNK_TIMEOUT)
def heavy_hitters(handle: dict, validated: dict) -> dict:  # noqa: ARG001 - ``validated`` orders the tasks
    from tasks import analytics

    return analytics.heavy_hitters(handle)


@task(execution_timeout=timedelta(minutes=30))
def log_results(handle: dict, measured: dict) -> dict:  # noqa: ARG001 - ``measured`` orders the tasks
    from tasks import analytics

    return analytics.log_results(handle)


@task(execution_timeout=timedelta(minutes=10))
def reference_check(handle: dict, logged: dict) -> dict:  # noqa: ARG001 - ``logged`` orders the tasks
    from tasks import analytics

    outcome = analytics.reference_check(handle)
    if outcome["status"] == "no-recipe":
        raise AirflowSkipException("No recipe: nothing to check against a tutorial")
    return outcome


@dag(
    dag_id=Path(__file__).stem,
    schedule=None,
    tags=["fedflow", "analytics"],
    params=analytics_params(),
    doc_md=__doc__,
    **DAG_SETTINGS,
)
def federated_analytics():
    handle = resolve_config()
    validated = validate_task(training=False)(handle, stage(handle))
    measured = with_mlflow_link(heavy_hitters(handle, validated))
    reference_check(handle, with_mlflow_link(log_results(handle, measured)))


federated_analytics()
