"""The steps of a federated-analytics run, as the ``federated_analytics`` DAG calls them: resolve -> stage ->
validate -> heavy hitters (TFF process) -> log results -> reference check. No Airflow here.

The run directory ``data/runs/<dag>__<run id>/`` holds the frozen :class:`AnalyticsConfig`
(``analytics_config.json``) and, as ``config.json``, the staging config it implies
(:meth:`AnalyticsConfig.staging_config`): so the shared stage and validate steps (``tasks.steps``) stage and
validate the plays exactly as for training, reusing identical stages. The TFF side
(``python -m trainer.heavy_hitters``) writes ``heavy_hitters.json`` and ``recipe_results.json``; this module
logs them to the run's MLflow run: params (the config), metrics, the tables (``heavy_hitters/*.{csv,md,html}``)
and a bar chart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks import atomic, launch, paths, plots, recipes, reference, tables, tracking
from tasks.analytics_config import CONFIG_FILE, AnalyticsConfig
from tasks.config import ConfigError
from tasks.paths import RunPaths
from tasks.sources.base import SourceError

__all__ = ["ConfigError", "heavy_hitters", "log_results", "reference_check", "resolve"]

log = logging.getLogger(__name__)
HEAVY_HITTERS_FILE = "heavy_hitters.json"  # trainer.heavy_hitters.HEAVY_HITTERS_FILE
SUMMARY_FILE = "analytics_summary.json"
RELEASE_COLUMNS = ("rank", "word", "count", "clients", "expected_count", "dp_count")
DP_COLUMNS = ("rank", "word", "dp_count", "count")
CHART_WORDS = 30


def resolve(params: Mapping[str, Any], *, dag_id: str, run_id: str, tags: Mapping[str, str] | None = None) -> dict:
    """Validates ``params`` (a recipe's settings under the params a user changed), counts the plays' speaking
    roles, freezes both configs in the run directory and opens the MLflow run. Raises ConfigError."""
    try:
        params = recipes.apply(params, kind="analytics")
    except recipes.RecipeError as e:
        raise ConfigError(str(e)) from e
    cfg = AnalyticsConfig.from_mapping(params)
    from tasks.sources.shakespeare import ShakespeareSource  # noqa: PLC0415 - reads the archive

    try:
        roles = len(ShakespeareSource(plays=cfg.parsed_plays or None).client_sizes("train"))
    except SourceError as e:
        raise ConfigError(f"plays: {e}") from e
    staging = cfg.staging_config(roles)
    run = RunPaths.for_run(dag_id, run_id)
    run.root.mkdir(parents=True, exist_ok=True)
    frozen = run.root / CONFIG_FILE
    if frozen.exists() and AnalyticsConfig.read_json(frozen) != cfg:
        raise ConfigError(
            f"Run directory {run.root} already holds a different config. Fix: trigger a new DAG run "
            "instead of reusing this run id."
        )
    atomic.write_json(frozen, cfg.to_dict())
    atomic.write_json(run.config, staging.to_dict())
    mlflow_run = tracking.start_run(
        cfg, run, tags={"airflow.dag_id": dag_id, "airflow.run_id": run_id, "fedflow.kind": "analytics", **(tags or {})}
    )
    tracking.log_artifact(run, frozen)
    tracking.log_artifact(run, run.config, "data")
    log.info(
        "Run %s: heavy hitters over %d of the %d roles of plays %r; run directory %s",
        run_id,
        staging.num_clients + round(staging.num_clients * staging.test_fraction),
        roles,
        cfg.plays or "(all)",
        run.root,
    )
    return {"run_dir": str(run.root), "mlflow_run_id": mlflow_run}


def load(handle: Mapping[str, str]) -> tuple[AnalyticsConfig, RunPaths]:
    run = RunPaths(Path(handle["run_dir"]))
    return AnalyticsConfig.read_json(run.root / CONFIG_FILE), run


def heavy_hitters(handle: Mapping[str, str]) -> dict[str, Any]:
    """Runs the heavy-hitters computation in the TFF environment (its own process group, killed on every
    exit path, after ``timeout_minutes``). Idempotent: results of this config already there are kept."""
    cfg, run = load(handle)
    out = run.root / HEAVY_HITTERS_FILE
    if not (out.exists() and atomic.read_json(out).get("config") == cfg.to_dict()):
        launch.run_trainer(
            ["--run-dir", str(run.root)],
            module="trainer.heavy_hitters",
            log_path=run.logs / "heavy_hitters.log",
            timeout_s=cfg.timeout_minutes * 60,
        )
    results = atomic.read_json(out)["results"]
    log.info("Heavy hitters: %s", results)
    return results


def release_rows(written: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The released words, most counted first, with their DP count where the DP release kept them."""
    dp = {r["word"]: r["dp_count"] for r in written.get("dp") or []}
    rows = sorted(written["release"], key=lambda r: (-r["count"], r["word"]))
    return [{**r, "rank": i + 1, "dp_count": dp.get(r["word"], "")} for i, r in enumerate(rows)]


def write_tables(cfg: AnalyticsConfig, written: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """The release (and DP release) as csv/md/html, and a bar chart of the most counted words."""
    rows = release_rows(written)
    files = tables.write(rows, RELEASE_COLUMNS, out_dir, "heavy_hitters", cell=lambda _, v: "" if v is None else str(v))
    bars = [("count", [r["count"] for r in rows[:CHART_WORDS]])]
    if written.get("dp") is not None:
        dp_rows = [{**r, "rank": i + 1} for i, r in enumerate(written["dp"])]
        files += tables.write(dp_rows, DP_COLUMNS, out_dir, "dp_heavy_hitters", cell=lambda _, v: str(v))
        bars.append(
            (f"DP count (ε={cfg.dp_epsilon:g}, δ={cfg.dp_delta:g})", [r["dp_count"] or 0 for r in rows[:CHART_WORDS]])
        )
    title = f"Heavy hitters of {written['results']['clients']} clients ({cfg.plays or 'every play'})"
    files.append(
        plots.bar_chart(
            [r["word"] for r in rows[:CHART_WORDS]], bars, out_dir / "heavy_hitters.png", title=title, ylabel="count"
        )
    )
    return files


def log_results(handle: Mapping[str, str]) -> dict[str, Any]:
    """Logs the results to the MLflow run (metrics, tables, chart, the trainer's log), closes it and writes
    ``analytics_summary.json``."""
    cfg, run = load(handle)
    written = atomic.read_json(run.root / HEAVY_HITTERS_FILE)
    results = written["results"]
    metrics = {k: float(v) for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    _log_metrics(run, metrics)
    for path in write_tables(cfg, written, run.root / "heavy_hitters"):
        tracking.log_artifact(run, path, "heavy_hitters")
    tracking.log_artifact(run, run.root / HEAVY_HITTERS_FILE)
    tracking.log_artifacts(run, run.logs, "logs")
    top = ", ".join(f"{r['word']} {r['count']}" for r in release_rows(written)[:5])
    headline = f"{results['words_released']} heavy hitters of {results['clients']} clients: {top}" + (
        f"; DP (ε={cfg.dp_epsilon:g}, δ={cfg.dp_delta:g}, τ={cfg.threshold:.3g}) released "
        f"{results['dp_words_released']}"
        if cfg.dp
        else ""
    )
    tracking.set_tags(run, {"mlflow.note.content": headline, "fedflow.words_released": str(results["words_released"])})
    tracking.finish_run(run)
    summary = {
        "mlflow_run_id": tracking.run_id(run),
        "experiment": cfg.experiment_name,
        "tracking_uri": paths.tracking_uri(),
        "run_dir": str(run.root),
        "headline": headline,
        "results": results,
    }
    atomic.write_json(run.root / SUMMARY_FILE, summary)
    log.info("Result: %s", headline)
    return summary


def _log_metrics(run: RunPaths, metrics: Mapping[str, float]) -> None:
    """One batch of metrics at step 0 (a one-shot computation, no rounds)."""
    from mlflow.entities import Metric  # noqa: PLC0415 - tracking's dependency, loaded with it

    stamp = int(time.time() * 1000)
    tracking.client().log_batch(tracking.run_id(run), metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])


def reference_check(handle: Mapping[str, str]) -> dict[str, Any]:
    """A recipe run's reference check (tasks/reference.py) on ``recipe_results.json``: a table artifact and
    tags on the MLflow run. ``status`` ``no-recipe`` without a recipe."""
    cfg, run = load(handle)
    if cfg.recipe == recipes.NO_RECIPE:
        return {"status": "no-recipe"}
    recipe = recipes.load(cfg.recipe)
    rows = reference.evaluate(recipe.checks, reference.RunValues(run))
    outcome = reference.summary(rows)
    for path in reference.write(rows, run.root / "reference"):
        tracking.log_artifact(run, path, "reference")
    tracking.set_tags(
        run,
        {
            "fedflow.recipe": cfg.recipe,
            "fedflow.recipe_variant": cfg.recipe_variant,
            "fedflow.tutorial": recipe.tutorial,
            "fedflow.reference_check": outcome,
            **{f"fedflow.reference.{r['check']}": r["result"] for r in rows},
        },
    )
    for r in rows:
        (log.info if r["result"] == "pass" else log.warning)(
            "Reference check %s: %s | claim: %s | measured: %s | rule: %s",
            r["check"],
            r["result"].upper(),
            r["claim"],
            r["measured"],
            r["rule"],
        )
    log.info("Reference check of recipe %s (%s): %s", cfg.recipe, recipe.tutorial, outcome)
    return {"status": outcome, "recipe": cfg.recipe, "checks": rows}
