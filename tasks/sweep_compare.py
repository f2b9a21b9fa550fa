"""The end of a sweep: ``compare`` tabulates every planned point, plots them, runs a sweep recipe's reference
check on the parent run and gives the best point's model the alias ``champion`` (tasks/sweep.py plans and
runs the points)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks import atomic
from tasks.paths import RunPaths
from tasks.sweep import CHAMPION_ALIAS, Error, PointsFailedError, sweep_run
from tasks.sweep_curves import render_round_curves
from tasks.sweep_report import RESULT_COLUMNS, render_plots, write_tables


def compare(*, dag_id: str, run_id: str) -> dict[str, Any]:
    """Tabulates every planned point (failed ones as failed), plots accuracy vs ε and vs bits per
    parameter, logs all of it to the parent run under ``comparison/``, gives the best point's model
    version the alias ``champion``, and closes the parent run. Raises PointsFailedError afterwards
    when any point failed."""
    from tasks import steps, tracking

    run = sweep_run(dag_id, run_id)
    plan_file = run.root / "sweep.json"
    if not plan_file.exists():
        raise Error(f"No plan in {run.root}: the plan task failed, so there is nothing to compare.")
    record = atomic.read_json(plan_file)
    rows = [point_result(p, run.root, dag_id=dag_id) for p in record["points"]]
    champion = best_row(rows)
    out = run.root / "comparison"
    written = write_tables(rows, record["grid_fields"], out, champion=champion)
    written += render_plots(rows, record["grid_fields"], out, title=record["sweep"], champion=champion)
    written += render_round_curves(record["points"], rows, dag_id=dag_id, out_dir=out, title=record["sweep"])
    for path in written:
        tracking.log_artifact(run, path, "comparison")
    failed = [r for r in rows if r["status"] != "succeeded"]
    for row in failed:  # a point killed outright never reached its failure callback
        steps.mark_failed(dag_id, row["run_id"])
    tags = {"fedflow.points_succeeded": str(len(rows) - len(failed)), "fedflow.points_failed": str(len(failed)),
            **_reference_check(record, run, dag_id=dag_id)}
    if champion is not None:
        tags.update(set_champion(champion))
        tracking.client().log_metric(tracking.run_id(run), "best_final_test_accuracy", champion["final_test_accuracy"])
    tracking.set_tags(run, tags)
    tracking.finish_run(run, status="FAILED" if failed else "FINISHED")
    result = {"points": len(rows), "failed": len(failed), "table": str(out / "comparison.csv"),
              "champion": None if champion is None else {k: champion[k] for k in ("point", "label", "version")}}
    if failed:
        raise PointsFailedError(f"{len(failed)} of {len(rows)} grid points failed (the comparison of the others is "
                                f"logged): " + "; ".join(f"{r['point']} ({r['label']}): {r['error']}" for r in failed))
    return result


def _reference_check(record: Mapping[str, Any], run: RunPaths, *, dag_id: str) -> dict[str, str]:
    """A sweep recipe's reference check on its grid points (tasks/reference.py): the table goes to the
    parent run under ``reference/``; returns its tags. Nothing for a plain sweep."""
    from tasks import recipes, reference, tracking

    name = record["base"].get("recipe", recipes.NO_RECIPE)
    if name == recipes.NO_RECIPE:
        return {}
    recipe = recipes.load(name)
    values = reference.SweepValues({p["label"]: reference.RunValues(RunPaths.for_run(dag_id, p["run_id"]))
                                    for p in record["points"]})
    rows = reference.evaluate(recipe.checks, values)
    for path in reference.write(rows, run.root / "reference"):
        tracking.log_artifact(run, path, "reference")
    return {"fedflow.recipe": name, "fedflow.recipe_variant": record["base"].get("recipe_variant", "default"),
            "fedflow.tutorial": recipe.tutorial, "fedflow.reference_check": reference.summary(rows),
            **{f"fedflow.reference.{r['check']}": r["result"] for r in rows}}


def point_result(point: Mapping[str, Any], sweep_dir: Path, *, dag_id: str) -> dict[str, Any]:
    """One row of the comparison: the point's grid values, its status and its final results."""
    from tasks import metrics_log

    run = RunPaths.for_run(dag_id, point["run_id"])
    outcome_file = Path(sweep_dir) / "points" / f"p{point['index']:02d}.json"
    outcome = atomic.read_json(outcome_file) if outcome_file.exists() else {
        "status": "failed", "error": "no result: the task did not finish (killed, timed out or never started)"}
    row = {"point": f"p{point['index']:02d}", "label": point["label"], "run_id": point["run_id"], **point["grid"],
           "status": outcome["status"], "error": outcome.get("error", ""), "mlflow_run_id": "",
           "registered_model_name": "", "version": "", **dict.fromkeys(RESULT_COLUMNS)}
    if run.mlflow_run.exists():
        row["mlflow_run_id"] = atomic.read_json(run.mlflow_run)["run_id"]
    if outcome["status"] != "succeeded":
        return row
    final = atomic.read_json(run.final)
    row.update(final_test_accuracy=final["test_accuracy"], final_test_loss=final["test_loss"],
               registered_model_name=outcome["registered_model_name"], version=str(outcome["version"]))
    for metrics in metrics_log.read_rows(run.metrics):
        row.update({k: metrics[k] for k in RESULT_COLUMNS[2:] if k in metrics})
        if "noise_multiplier" in metrics and "noise_multiplier" in point["grid"]:
            row["noise_multiplier"] = metrics["noise_multiplier"]  # the noise used: dp_target_epsilon calibrates it
    return row


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The succeeded point with the highest final test accuracy (the first in grid order on a tie)."""
    done = [r for r in rows if r["status"] == "succeeded"]
    return max(done, key=lambda r: r["final_test_accuracy"]) if done else None


def set_champion(row: Mapping[str, Any]) -> dict[str, str]:
    """Points the alias ``champion`` at the model version the point registered; returns the parent's
    tags naming it."""
    from tasks import tracking

    c = tracking.client()
    c.set_registered_model_alias(row["registered_model_name"], CHAMPION_ALIAS, row["version"])
    c.set_tag(row["mlflow_run_id"], "fedflow.champion", "true")
    return {"fedflow.champion_point": row["point"], "fedflow.champion_params": row["label"],
            "fedflow.champion_run_id": row["mlflow_run_id"], "fedflow.champion_model_version": row["version"],
            "fedflow.champion_model_uri": f"models:/{row['registered_model_name']}@{CHAMPION_ALIAS}",
            "fedflow.champion_test_accuracy": f"{row['final_test_accuracy']:.4f}"}
