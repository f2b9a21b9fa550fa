"""
### Experiment sweep

Runs every point of a grid of federated-learning experiments and compares them. The grid is a file
committed under `sweeps/<name>.yaml` (this DAG is `sweep_<name>`): a description, a schedule, `base`
settings shared by every point and a `grid` of settings to vary; the points are the cross product.

1. **plan** validates the file (every point's config, and its DP budget), freezes the plan in
   `data/runs/sweep_<name>__<run id>/` and opens the sweep's MLflow run (the parent).
2. **run_point** (one mapped task per point, pool/queue `gpu`) runs a complete experiment: resolve
   -> stage (content-addressed: shared by the points) -> validate -> every training chunk -> evaluate
   and register. Its MLflow run nests under the parent; a retry resumes from its checkpoints.
3. **compare** (after every point, failed or not) logs a table of each point's settings and final
   results (test accuracy and loss, ε, bits per parameter) and plots of accuracy vs ε and vs bits to
   the parent run under `comparison/`, gives the best point's model version the alias `champion`,
   and fails the DAG run if any point failed.

Params: `max_points` runs only the first N points (0 = all); `overrides` changes base settings for
this run only, e.g. `{"rounds": 5}`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from dags._fedflow_common import DAG_SETTINGS
from tasks import sweep

POINT_TIMEOUT = timedelta(hours=24)  # each chunk's own timeout (chunk_timeout_minutes) is enforced inside


def mark_sweep_run_failed(context) -> None:
    """Replaces the shared callback, which would close the sweep's parent run when a single point fails:
    a failed point marks its own MLflow run; plan and compare mark the parent."""
    from tasks import sweep as sweeps

    ti = context["ti"]
    map_index = ti.map_index if ti.task_id == "run_point" else None
    sweeps.mark_failed(dag_id=context["dag"].dag_id, run_id=context["run_id"], map_index=map_index)


# No start_date: with one (and catchup off) Airflow starts the most recent scheduled run the moment it
# first sees the DAG, so a nightly sweep would run at once on deployment. Without one, the cron
# trigger timetable waits for the next scheduled time.
SWEEP_SETTINGS = {
    **{k: v for k, v in DAG_SETTINGS.items() if k != "start_date"},
    "default_args": {**DAG_SETTINGS["default_args"], "on_failure_callback": mark_sweep_run_failed},
}
PARAMS = {
    "max_points": Param(0, type="integer", minimum=0, maximum=sweep.MAX_POINTS, title="Max points",
                        description="Run only the first N grid points, in file order (0 = all)."),
    "overrides": Param({}, type="object", title="Override base settings",
                       description='Experiment settings replacing the file\'s base for this run only, e.g. '
                       '{"rounds": 5}. Grid fields cannot be overridden.'),
}


def _doc(path: Path, spec: sweep.Sweep | None, problem: str | None) -> str:
    if spec is None:
        return f"{__doc__}\n#### This sweep file is invalid\n`{path}`\n\n```\n{problem}\n```\n"
    grid = "\n".join(f"| `{k}` | {', '.join(map(str, v))} |" for k, v in spec.grid.items())
    grid += "".join(f"\n| case {i} | {sweep.point_label(c)} |" for i, c in enumerate(spec.cases))
    base = ", ".join(f"`{k}={v}`" for k, v in spec.base.items()) or "(defaults)"
    return (f"{__doc__}\n#### This sweep: {spec.name}\n{spec.description}\n\nFile `{path.name}`, schedule "
            f"`{spec.schedule}`, {len(spec.points())} points.\n\nBase: {base}\n\n| grid field | values |\n"
            f"| --- | --- |\n{grid}\n")


def _timetable(schedule: str | None):
    """The sweep file's schedule: a cron trigger (a run at each time, data interval empty) in UTC."""
    if schedule is None or schedule == "@once":
        return schedule
    return CronTriggerTimetable(schedule, timezone="UTC")


RECIPE_PARAMS = {
    **PARAMS,
    "recipe_variant": Param("default", type="string", enum=["default", "full", "tiny"], title="Recipe size",
                            description="'default': minutes on 2 cores; 'full': the tutorial's size; 'tiny': tests."),
}


def build_sweep_dag(path: Path, *, recipe: bool = False):
    """The DAG of one sweep file, or of a sweep recipe (``recipes/<name>.yaml`` with a grid; DAG
    ``sweep_recipe_<name>``, with a size param). An invalid file still gets its DAG (unscheduled, its
    docs and its plan task showing the error), so one broken file does not hide the other sweeps."""
    from tasks import recipes

    try:
        spec = sweep.from_recipe(recipes.load(path.stem)) if recipe else sweep.load(path)
        problem = None
    except (sweep.SweepFileError, recipes.RecipeError) as e:
        spec, problem = None, str(e)

    @dag(
        dag_id=f"sweep_recipe_{path.stem}" if recipe else sweep.dag_id_for(path),
        schedule=_timetable(spec.schedule) if spec else None,
        tags=["fedflow", "sweep", *(["recipe"] if recipe else []), *([] if spec else ["invalid"])],
        params=RECIPE_PARAMS if recipe else PARAMS,
        doc_md=_doc(path, spec, problem),
        **SWEEP_SETTINGS,
    )
    def sweep_dag():
        @task(execution_timeout=timedelta(minutes=10))
        def plan() -> list[dict]:
            ctx = get_current_context()
            try:
                if problem is not None:
                    raise sweep.SweepFileError(problem)
                return sweep.plan(path, dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"],
                                  max_points=ctx["params"]["max_points"], overrides=ctx["params"]["overrides"],
                                  recipe_variant=ctx["params"]["recipe_variant"] if recipe else None)
            except sweep.SweepFileError as e:  # the file or the params must change first
                raise AirflowFailException(str(e)) from e

        @task(pool="gpu", queue="gpu", retries=2, retry_delay=timedelta(seconds=30), execution_timeout=POINT_TIMEOUT,
              map_index_template="{{ point_label }}")
        def run_point(point: dict) -> dict:
            from tasks import steps, warm_start

            get_current_context()["point_label"] = f"p{point['index']:02d} {point['label']}"
            try:
                return sweep.run_point(point)
            except (steps.ConfigError, steps.DataValidationError, warm_start.WarmStartError,
                    *steps.StageInputError) as e:  # no retry helps
                raise AirflowFailException(str(e)) from e

        @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=30))
        def compare() -> dict:
            from tasks import sweep_compare

            ctx = get_current_context()
            try:
                return sweep_compare.compare(dag_id=ctx["dag"].dag_id, run_id=ctx["run_id"])
            except sweep.Error as e:  # points failed (after the comparison was logged), or no plan
                raise AirflowFailException(str(e)) from e

        points = plan()
        run_point.expand(point=points) >> compare()

    return sweep_dag()


for _path in sweep.sweep_files():
    globals()[sweep.dag_id_for(_path)] = build_sweep_dag(_path)

# Sweep recipes (the tutorials that compare settings): the same DAG, named sweep_recipe_<name>.
for _path in sweep.recipe_sweep_files():
    globals()[f"sweep_recipe_{_path.stem}"] = build_sweep_dag(_path, recipe=True)
