"""The steps of one experiment, as the DAG calls them: resolve -> stage -> validate -> train chunks
-> evaluate and register. Each step takes the run handle ``{"run_dir": ...}`` returned by
:func:`resolve`, reads the frozen config from the run directory, and returns a small JSON-able dict.
No Airflow here: the DAG file only wires these together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks import atomic, launch, metrics_log, paths, plots, privacy, recipes, reference, shards, tracking
from tasks import stage as staging
from tasks import validate as validation
from tasks.checkpoints import CheckpointStore
from tasks.config import ConfigError, ExperimentConfig
from tasks.paths import RunPaths
from tasks.shards import SchemaError
from tasks.sources.base import SourceError
from tasks.validate import DataValidationError

__all__ = ["ConfigError", "DataValidationError", "StageInputError", "evaluate_and_register", "finish_data_run",
           "load", "mark_failed", "reference_check", "resolve", "stage", "train_chunk", "validate"]

# Staging failures caused by the input (source file, partition settings): a retry cannot fix them.
StageInputError = (SourceError, SchemaError, staging.PartitionError)

log = logging.getLogger(__name__)
EXPORT_TIMEOUT_S = 30 * 60


def resolve(
    params: Mapping[str, Any],
    *,
    dag_id: str,
    run_id: str,
    training: bool = True,
    tags: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Validates ``params``, freezes the config in the run directory and opens the MLflow run.

    The run directory is keyed by the Airflow run id: a retry resumes its own run, and a new DAG run
    never picks up another run's checkpoints by accident. ``training=False`` (the data DAG) skips
    the checks that only training needs. ``tags`` are added to the MLflow run when it is created
    (a sweep passes ``mlflow.parentRunId``).
    """
    if not training:  # no rounds to sample: the default clients_per_round must not bind small data sets
        params = {"clients_per_round": 1, **params}
    try:
        params = recipes.apply(params)  # a recipe's settings under the params a user changed
    except recipes.RecipeError as e:
        raise ConfigError(str(e)) from e
    cfg = ExperimentConfig.from_mapping(params)
    if training:
        cfg.check_trainable()
        cfg = privacy.calibrated(cfg)  # dp_target_epsilon: the noise for that ε, frozen with the config
    planned = privacy.check_budget(cfg) if training else None  # before anything is written or trained
    run = RunPaths.for_run(dag_id, run_id)
    run.root.mkdir(parents=True, exist_ok=True)
    if run.config.exists():
        if ExperimentConfig.read_json(run.config) != cfg:
            raise ConfigError(
                f"Run directory {run.root} already holds a different config. "
                "Fix: trigger a new DAG run instead of reusing this run id."
            )
    else:
        atomic.write_json(run.config, cfg.to_dict())
    mlflow_run = tracking.start_run(cfg, run, tags={"airflow.dag_id": dag_id, "airflow.run_id": run_id, **(tags or {})})
    if planned is not None:
        tracking.set_tags(run, {"fedflow.dp_planned_epsilon": f"{planned['epsilon']:.6g}",
                                "fedflow.dp_delta": f"{planned['delta']:.6g}"})
    if training and cfg.dp_target_epsilon > 0:
        tracking.set_tags(run, {"fedflow.dp_calibrated_noise_multiplier": f"{cfg.noise_multiplier:g}"})
        log.info("Calibrated noise_multiplier=%g for dp_target_epsilon=%g", cfg.noise_multiplier,
                 cfg.dp_target_epsilon)
    tracking.log_artifact(run, run.config)
    log.info("Run %s: %d rounds in %d chunk(s); run directory %s", run_id, cfg.rounds, cfg.num_chunks, run.root)
    return {"run_dir": str(run.root), "mlflow_run_id": mlflow_run}


def load(handle: Mapping[str, str]) -> tuple[ExperimentConfig, RunPaths]:
    run = RunPaths(Path(handle["run_dir"]))
    return ExperimentConfig.read_json(run.config), run


def stage(handle: Mapping[str, str]) -> dict[str, Any]:
    """Stages (or reuses) the data set. Returns its path, fingerprint, counts and the Airflow asset
    (``asset_uri``) the DAG announces when the data is new."""
    cfg, run = load(handle)
    staged = staging.stage_dataset(cfg)
    atomic.write_json(run.staged, {"path": str(staged.path), "fingerprint": staged.fingerprint,
                                   "content_sha256": staged.manifest.data.get("content_sha256")})
    tracking.set_tags(
        run,
        {"fedflow.dataset": cfg.dataset, "fedflow.dataset_fingerprint": staged.fingerprint,
         "fedflow.staged_path": str(staged.path), "fedflow.dataset_kind": staged.manifest.kind},
    )
    tracking.log_artifact(run, staged.path / shards.MANIFEST, "data")
    splits = staged.manifest.data["splits"]
    train = splits["train"]
    log.info("%s data set %s: %s", "Reused" if staged.reused else "Staged", staged.path,
             {name: (s["num_clients"], s["num_examples"]) for name, s in splits.items()})
    return {"path": str(staged.path), "fingerprint": staged.fingerprint, "reused": staged.reused,
            "kind": staged.manifest.kind, "clients": len(train["clients"]), "train_examples": train["num_examples"],
            "asset_uri": staging.asset_uri(cfg), "worker": worker_role()}


def validate(handle: Mapping[str, str], *, training: bool = True) -> dict[str, Any]:
    """Raises DataValidationError, listing every problem, when the staged data fails validation.

    The report (JSON, one-screen summary, Great Expectations Data Docs) goes to the run directory
    and to the MLflow run under ``data/``; the summary is logged.
    """
    cfg, run = load(handle)
    manifest = shards.Manifest.read(Path(atomic.read_json(run.staged)["path"]))
    try:  # the source as it is now: a file changed since staging is reported, not silently trained on
        source = staging.open_source(cfg)
        identity = None if source is None else source.identity()
    except SourceError as e:
        identity = {"unreadable": str(e)}
    docs = run.root / "data_docs"
    report = validation.validate_staged(manifest, cfg, source_identity=identity, docs_dir=docs, training=training)
    atomic.write_json(run.validation, report.to_dict())
    summary = report.summary()
    (run.root / "validation_summary.txt").write_text(summary + "\n")
    log.info("Validation report:\n%s", summary)
    tracking.log_artifact(run, run.validation, "data")
    tracking.log_artifact(run, run.root / "validation_summary.txt", "data")
    tracking.log_artifacts(run, docs, "data/data_docs")
    tracking.set_tags(run, {"fedflow.validation": "passed" if report.success else "failed"})
    if not report.success:
        raise DataValidationError(
            f"Staged data set {manifest.root} failed validation:\n- " + "\n- ".join(report.problems())
            + "\nFix: re-stage the data set (delete the directory) or correct the source."
        )
    log.info("Validation passed: %s", report.statistics)
    return {"success": True, **report.statistics}


def data_settings(handle: Mapping[str, str]) -> dict[str, Any]:
    """The run's Data-section settings: what a training run needs to reuse exactly this staged data."""
    cfg, _ = load(handle)
    return cfg.data_settings()


def finish_data_run(handle: Mapping[str, str]) -> dict[str, Any]:
    """Closes the MLflow run of a stage-and-validate-only DAG run."""
    cfg, run = load(handle)
    tracking.finish_run(run)
    return {"mlflow_run_id": tracking.run_id(run), "experiment": cfg.experiment_name}


def worker_role() -> str:
    """Which worker ran this step: ``FEDFLOW_WORKER_ROLE`` of its environment (the GPU workers of a
    distributed deployment set ``gpu``; host names cannot tell two workers on one host apart)."""
    return os.environ.get("FEDFLOW_WORKER_ROLE", "")


def train_chunk(handle: Mapping[str, str], chunk_index: int, *, attempt: tuple[str, int] | None = None) -> dict[str, Any]:
    """Brings the run to this chunk's target round; streams metrics into MLflow meanwhile.

    Idempotent: a chunk whose target the newest checkpoint has reached does nothing but re-sync.
    Returns ``status``: ``not-needed`` (the plan has fewer chunks), ``done`` or ``trained``. ``attempt``
    (Airflow task id, try number) is tagged on the MLflow run when the chunk is needed.
    """
    cfg, run = load(handle)
    target = cfg.chunk_target_round(chunk_index)
    if target is None:
        return {"status": "not-needed", "chunk": chunk_index, "chunks": cfg.num_chunks}
    if attempt is not None:
        record_attempt(handle, *attempt)
    reached = CheckpointStore(run.checkpoints, keep=cfg.keep_checkpoints).latest_round()
    if reached is not None and reached >= target:
        tracking.sync_metrics_if_reachable(run)
        return {"status": "done", "chunk": chunk_index, "round": reached}
    log.info("Chunk %d: bringing the run from round %s to %d", chunk_index, reached or 0, target)
    launch.run_trainer(
        ["train", "--run-dir", str(run.root), "--until-round", str(target)],
        log_path=run.chunk_log(chunk_index),
        timeout_s=cfg.chunk_timeout_minutes * 60,
        on_poll=lambda: tracking.sync_metrics(run),
    )
    # The training is done and checkpointed: an MLflow outage now must not fail (and re-run) the chunk.
    synced = tracking.sync_metrics_if_reachable(run)
    if synced is not None:
        tracking.log_artifact(run, run.chunk_log(chunk_index), "logs")
        tracking.set_tags(run, tracking.environment_tags(run))
    return {"status": "trained", "chunk": chunk_index, "round": target, "rounds_synced_at_end": synced,
            "mlflow_reachable": synced is not None, "worker": worker_role(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def evaluate_and_register(handle: Mapping[str, str]) -> dict[str, Any]:
    """Exports and evaluates the final model (TFF env), logs and registers it, closes the MLflow run."""
    cfg, run = load(handle)
    final = atomic.read_json(run.final) if run.final.exists() and run.model.exists() else None
    if final is None or final["round"] != cfg.rounds:
        launch.run_trainer(["export", "--run-dir", str(run.root)], log_path=run.export_log, timeout_s=EXPORT_TIMEOUT_S)
        final = atomic.read_json(run.final)
    tracking.sync_metrics(run)
    for path in (run.metrics, run.final):
        tracking.log_artifact(run, path)
    tracking.log_artifacts(run, run.logs, "logs")  # every chunk's log, also those an MLflow outage held back
    for png in plots.render(run.metrics, run.root / "plots", title=f"{cfg.algorithm}, {cfg.aggregator}"):
        tracking.log_artifact(run, png, "plots")
    tracking.log_artifact(run, run.tff_env)
    tracking.log_artifacts(run, run.root / "artifacts", "recipe")  # a recipe's measured extras (e.g. generated text)
    model = tracking.log_and_register_model(run, cfg, final)
    result = headline(cfg, final, model, run)
    tracking.set_tags(run, {**tracking.environment_tags(run), "mlflow.note.content": result})
    tracking.finish_run(run)
    summary = {
        "mlflow_run_id": tracking.run_id(run),
        "experiment": cfg.experiment_name,
        "tracking_uri": paths.tracking_uri(),
        "rounds": cfg.rounds,
        "final_test_accuracy": final["test_accuracy"],
        "final_test_loss": final["test_loss"],
        "algorithm": cfg.algorithm,
        **dict(zip(("test_accuracy_label", "test_loss_label"), metric_labels(final), strict=True)),
        "headline": result,
        **{k: model[k] for k in ("registered_model_name", "version", "model_uri")},
        "run_dir": str(run.root),
        "worker": worker_role(),
    }
    atomic.write_json(run.summary, summary)
    log.info("Result: %s", result)
    log.info("Summary: %s", summary)
    return summary


def reference_check(handle: Mapping[str, str]) -> dict[str, Any]:
    """A recipe run's reference check: the tutorial's claims against this run's values, as a table
    artifact and tags on the MLflow run (tasks/reference.py). ``status`` ``no-recipe`` otherwise."""
    cfg, run = load(handle)
    if cfg.recipe == recipes.NO_RECIPE:
        return {"status": "no-recipe"}
    recipe = recipes.load(cfg.recipe)
    if recipe.is_sweep:  # its checks compare grid points: the sweep's compare step makes them
        return {"status": "sweep-recipe", "recipe": cfg.recipe,
                "message": f"Recipe {cfg.recipe} is a sweep; its reference check runs in the DAG sweep_recipe_"
                           f"{cfg.recipe} (make run RECIPE={cfg.recipe})."}
    rows = reference.evaluate(recipe.checks, reference.RunValues(run))
    outcome = reference.summary(rows)
    for path in reference.write(rows, run.root / "reference"):
        tracking.log_artifact(run, path, "reference")
    tracking.set_tags(run, {"fedflow.recipe": cfg.recipe, "fedflow.recipe_variant": cfg.recipe_variant,
                            "fedflow.tutorial": recipe.tutorial, "fedflow.reference_check": outcome,
                            **{f"fedflow.reference.{r['check']}": r["result"] for r in rows}})
    for r in rows:
        (log.info if r["result"] == "pass" else log.warning)(
            "Reference check %s: %s | claim: %s | measured: %s | rule: %s", r["check"], r["result"].upper(),
            r["claim"], r["measured"], r["rule"])
    log.info("Reference check of recipe %s (%s): %s", cfg.recipe, recipe.tutorial, outcome)
    return {"status": outcome, "recipe": cfg.recipe, "checks": rows}


def record_attempt(handle: Mapping[str, str], task_id: str, try_number: int) -> None:
    """Lineage: tags the MLflow run with the Airflow task and try now working on it. Best effort: an
    MLflow outage must not stop training (the tag is set by the next task that reaches MLflow)."""
    _, run = load(handle)
    try:
        tracking.set_tags(run, {"airflow.task_id": task_id, "airflow.try_number": str(try_number),
                                f"airflow.try.{task_id}": str(try_number)})
    except Exception as e:  # noqa: BLE001 - see docstring
        log.warning("Could not tag the MLflow run with the Airflow try (%s); going on", e)


def headline(cfg: ExperimentConfig, final: Mapping[str, Any], model: Mapping[str, Any], run: RunPaths) -> str:
    """One line a person reads first: the result, the privacy and compression it cost, where to look."""
    accuracy, loss = metric_labels(final)
    parts = [f"{accuracy} {final['test_accuracy']:.4f} ({loss} {final['test_loss']:.4f}) after {cfg.rounds} rounds "
             f"of {cfg.algorithm} on {cfg.dataset}"]
    last = {}
    for row in metrics_log.read_rows(run.metrics):
        last.update(row)
    if "epsilon" in last:
        delta = privacy.PrivacyPlan.of(cfg).delta  # dp_delta 0 means the default, 1/N^1.1
        parts.append(f"DP ε = {last['epsilon']:.3g} at δ = {delta:.3g}")
    if "compression_ratio" in last:
        parts.append(f"compression {last['compression_ratio']:.3g}×")
    parts.append(f"model {model['registered_model_name']} v{model['version']} (@{tracking.MODEL_ALIAS})")
    url = tracking.ui_url(run)
    if url:
        parts.append(f"MLflow: {url}")
    return "; ".join(parts)


def metric_labels(final: Mapping[str, Any]) -> tuple[str, str]:
    """What the final ``test_accuracy`` and ``test_loss`` measure: a classifier's unless the trainer's export
    names them (fed_recon: rating accuracy and MSE)."""
    return final.get("test_accuracy_label", "test accuracy"), final.get("test_loss_label", "test loss")


def mark_failed(dag_id: str, run_id: str) -> bool:
    """Marks the MLflow run of Airflow run ``run_id`` FAILED (a task failed for good). Returns
    whether there was an MLflow run to mark; its metrics and artifacts so far stay for inspection."""
    run = RunPaths.for_run(dag_id, run_id)
    if not run.mlflow_run.exists():
        return False
    tracking.finish_run(run, status="FAILED")
    return True

