"""The warm_start step of a training run: resolve ``warm_start`` in MLflow's registry, pretraining it first
when the alias does not exist yet; download the model into the run directory for the trainer.

TFF's text-generation tutorial fine-tunes a downloaded, pretrained character model. Here a run with
``warm_start='models:/<name>@<alias>'``:

1. looks the alias up in the model registry; when it exists, that version is the warm start (a later run
   reuses the pretrained model instead of training it again);
2. when it does not and ``pretrain_plays`` is set, stages those plays as a data set of their own (disjoint
   from the fine-tuning plays: checked on the config and again on the staged client ids), trains the model
   centrally in the TFF environment (``python -m trainer pretrain``, trainer/pretrain.py), logs that as an
   MLflow run of its own (``pretrain-<run>``: params, per-epoch metrics, held-out metrics, generated text)
   and registers its model as ``<name>`` with the alias;
3. downloads the version into ``<run>/warm_start/model`` and records it in ``warm_start.json`` and as tags
   of the run's MLflow run, so every chunk (and a resumed run) starts from exactly that version.

No Airflow here; the DAG's ``warm_start`` task calls :func:`prepare`. Idempotent: a retry reuses what an
earlier try downloaded or pretrained.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks import atomic, launch, paths, shards, tracking
from tasks import stage as staging
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths

log = logging.getLogger(__name__)
URI = re.compile(r"models:/(?P<name>[^@]+)@(?P<alias>.+)")
RECORD = "warm_start.json"
DIRECTORY = "warm_start"  # trainer/warm_start.py reads DIRECTORY/MODEL
MODEL = "model"
PRETRAIN = "pretrain"  # trainer/pretrain.py: STAGED in, the model, RESULT and SAMPLE out
PRETRAIN_STAGED = "staged.json"
PRETRAIN_RESULT = "pretrain.json"
PRETRAIN_SAMPLE = "generated_text.txt"
PRETRAIN_TIMEOUT_S = 2 * 60 * 60


class Error(Exception):
    """Base class for warm-start errors."""


class WarmStartError(Error, ValueError):
    """The warm start cannot be resolved: no such registered alias and nothing to pretrain, or the
    pretraining data overlaps the fine-tuning data. A retry cannot fix it."""


def parse(uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` -> (name, alias)."""
    match = URI.fullmatch(uri or "")
    if not match:
        raise WarmStartError(f"warm_start must be models:/<name>@<alias>. Got {uri!r}.")
    return match["name"], match["alias"]


def registered_version(c, name: str, alias: str):
    """The model version the alias points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def prepare(handle: Mapping[str, str]) -> dict[str, Any]:
    """Makes the run's warm start available to the trainer (see the module docstring). Returns ``status``:
    ``no-warm-start``, ``reused`` (an earlier try did it), ``registered`` (the alias existed) or
    ``pretrained`` (trained and registered by this run)."""
    run = RunPaths(Path(handle["run_dir"]))
    cfg = ExperimentConfig.read_json(run.config)
    if not cfg.warm_start:
        return {"status": "no-warm-start"}
    record, model_dir = run.root / RECORD, run.root / DIRECTORY / MODEL
    if record.exists() and (model_dir / "MLmodel").is_file():
        return {"status": "reused", **atomic.read_json(record)}
    name, alias = parse(cfg.warm_start)
    c = tracking.client()
    version = registered_version(c, name, alias)
    pretrained = None
    if version is None:
        if not cfg.pretrain_plays:
            raise WarmStartError(
                f"warm_start {cfg.warm_start!r}: the model registry has no alias {alias!r} of model {name!r} "
                f"({paths.tracking_uri()}). Fix: set pretrain_plays to pretrain and register it in this run, "
                "or register a model version and set the alias (MLflow UI or MlflowClient.set_registered_model_alias)."
            )
        pretrained = pretrain_and_register(cfg, run, name, alias)
        version = c.get_model_version(name, pretrained["version"])
    else:
        check_pretrained_like_config(c, version, cfg)
    _download(c, name, str(version.version), model_dir)
    info = {
        "uri": cfg.warm_start,
        "name": name,
        "alias": alias,
        "version": str(version.version),
        "source_run_id": version.run_id or "",
        "pretrained_by_this_run": pretrained is not None,
        "pretrain": (pretrained or {}).get("metrics", {}),
    }
    atomic.write_json(record, info)
    tracking.set_tags(
        run,
        {
            "fedflow.warm_start": cfg.warm_start,
            "fedflow.warm_start_version": info["version"],
            "fedflow.warm_start_source_run": info["source_run_id"],
        },
    )
    tracking.log_artifact(run, record)
    log.info(
        "Warm start %s = version %s of %s (%s)",
        cfg.warm_start,
        info["version"],
        name,
        "pretrained by this run" if pretrained else "registered earlier",
    )
    return {"status": "pretrained" if pretrained else "registered", **info}


PRETRAIN_SETTINGS = ("model", "rnn_units", "pretrain_epochs", "pretrain_batch_size", "pretrain_learning_rate")


def check_pretrained_like_config(c, version, cfg: ExperimentConfig) -> None:
    """A registered version that fedflow pretrained (its source run is a ``pretrain`` run) must have been
    pretrained with this config's settings when the config sets ``pretrain_plays``: else the alias would
    silently stand for another model (other plays, units, epochs) than the config describes."""
    if not cfg.pretrain_plays or not version.run_id:
        return  # no pretraining asked for: the registered model is the warm start, whoever made it
    source = c.get_run(version.run_id)
    if source.data.tags.get("fedflow.role") != "pretrain":
        return  # registered by hand: nothing to compare with
    params = source.data.params
    wanted = {key: str(getattr(cfg, key)) for key in PRETRAIN_SETTINGS}
    differ = {key: (params.get(key), value) for key, value in wanted.items() if params.get(key) != value}
    plays = sorted(p for p in params.get("pretrain_plays", "").split(",") if p)
    if plays != sorted(cfg.parsed_pretrain_plays):
        differ["pretrain_plays"] = (",".join(plays), ",".join(sorted(cfg.parsed_pretrain_plays)))
    if differ:
        shown = "; ".join(f"{key}: registered {old!r}, this run {new!r}" for key, (old, new) in differ.items())
        raise WarmStartError(
            f"warm_start {cfg.warm_start!r} is version {version.version}, pretrained by run {version.run_id} with "
            f"other settings than this run's ({shown}). Fix: name another alias in warm_start (this run then "
            "pretrains and registers it), set the settings back to the registered ones, or clear pretrain_plays "
            "to fine-tune the registered model as it is."
        )


def _download(c, name: str, version: str, model_dir: Path) -> None:
    import mlflow.artifacts  # noqa: PLC0415

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=".download-"))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=c.get_model_version_download_uri(name, version), dst_path=str(tmp)
            )
        )
        found = next(iter(sorted(local.rglob("MLmodel"), key=lambda p: len(p.parts))), None)
        if found is None:
            raise Error(
                f"Model {name} version {version} has no MLmodel file (downloaded to {local}). Fix: register "
                "an MLflow model directory."
            )
        shutil.rmtree(model_dir, ignore_errors=True)
        found.parent.rename(model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pretraining_config(cfg: ExperimentConfig, eligible_clients: int | None = None) -> ExperimentConfig:
    """The data settings that stage the pretraining plays: every role with enough lines, each role's
    lines split into training and held-out lines as the fine-tuning clients' are."""
    return dataclasses.replace(
        cfg,
        plays=",".join(cfg.parsed_pretrain_plays),
        pretrain_plays="",
        warm_start="",
        recipe="none",
        num_clients=max(2, eligible_clients or 2),
        clients_per_round=1,
        heldout_clients=0,
        split="within_client",
    )


def stage_pretraining_data(cfg: ExperimentConfig) -> staging.StagedDataset:
    """Stages (or reuses) the pretraining plays' roles as a data set."""
    probe = pretraining_config(cfg)
    sizes = staging.open_source(probe).client_sizes("train")
    need = staging.min_client_size(probe)
    eligible = sum(n >= need for n in sizes.values())
    if eligible < 2:
        raise WarmStartError(
            f"pretrain_plays {cfg.parsed_pretrain_plays} have {eligible} role(s) with >= {need} "
            f"lines. Fix: add plays or lower min_examples_per_client ({cfg.min_examples_per_client})."
        )
    return staging.stage_dataset(pretraining_config(cfg, eligible))


def check_disjoint(pretraining: shards.Manifest, fine_tuning: shards.Manifest) -> None:
    """Raises WarmStartError when a client (a play's role) is in both data sets."""
    ids = {split: set(pretraining.client_ids(split)) for split in pretraining.splits}
    shared = sorted(
        set().union(*ids.values()) & set().union(*(set(fine_tuning.client_ids(s)) for s in fine_tuning.splits))
    )
    if shared:
        raise WarmStartError(
            f"The pretraining and fine-tuning data share {len(shared)} client(s), e.g. {shared[:3]}. "
            "Fix: keep pretrain_plays and plays disjoint."
        )


def pretrain_and_register(cfg: ExperimentConfig, run: RunPaths, name: str, alias: str) -> dict[str, Any]:
    """Pretrains the model on ``pretrain_plays`` (unless an earlier try did), logs the pretraining as an MLflow
    run of its own and registers the model as ``name`` with ``alias``. Returns version, run id and metrics."""
    staged = stage_pretraining_data(cfg)
    check_disjoint(staged.manifest, shards.Manifest.read(Path(atomic.read_json(run.staged)["path"])))
    out = run.root / PRETRAIN
    out.mkdir(exist_ok=True)
    atomic.write_json(out / PRETRAIN_STAGED, {"path": str(staged.path), "fingerprint": staged.fingerprint})
    log_path = run.logs / "pretrain.log"
    if not ((out / PRETRAIN_RESULT).exists() and (out / MODEL / "MLmodel").is_file()):
        log.info(
            "Pretraining %s on %s (%d roles) for warm start models:/%s@%s",
            cfg.model,
            cfg.parsed_pretrain_plays,
            len(staged.manifest.client_ids("train")),
            name,
            alias,
        )
        launch.run_trainer(
            ["pretrain", "--run-dir", str(run.root)],
            log_path=log_path,
            timeout_s=max(PRETRAIN_TIMEOUT_S, cfg.chunk_timeout_minutes * 60),
        )
    result = atomic.read_json(out / PRETRAIN_RESULT)
    return {
        **_register(cfg, run, staged, result, name, alias),
        "metrics": {
            k: result[k] for k in ("test_loss", "test_accuracy", "train_sequences", "test_sequences", "seconds")
        },
    }


def _register(
    cfg: ExperimentConfig,
    run: RunPaths,
    staged: staging.StagedDataset,
    result: Mapping[str, Any],
    name: str,
    alias: str,
) -> dict[str, str]:
    import mlflow  # noqa: PLC0415
    from mlflow.entities import LoggedModelStatus, Metric, Param  # noqa: PLC0415

    c = tracking.client()
    experiment = tracking.experiment_id(c, cfg.experiment_name)
    created = c.create_run(
        experiment,
        tags={
            "mlflow.runName": f"pretrain-{run.root.name}"[:250],
            "fedflow.role": "pretrain",
            "fedflow.pretrain_for_run": tracking.run_id(run),
            "fedflow.pretrain_plays": ",".join(result["plays"]),
            "fedflow.dataset_fingerprint": staged.fingerprint,
            "fedflow.git_sha": tracking.git_sha(),
        },
    )
    rid = created.info.run_id
    params = {
        "model": cfg.model,
        "rnn_units": cfg.rnn_units,
        "pretrain_plays": ",".join(result["plays"]),
        "pretrain_epochs": cfg.pretrain_epochs,
        "pretrain_batch_size": cfg.pretrain_batch_size,
        "pretrain_learning_rate": cfg.pretrain_learning_rate,
        "seed": cfg.seed,
        "optimizer": "adam",
        "min_examples_per_client": cfg.min_examples_per_client,
        "test_fraction": cfg.test_fraction,
    }
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, epoch + 1)
        for key in ("loss", "accuracy")
        for epoch, value in enumerate(result[f"epoch_{key}"])
    ]
    metrics += [
        Metric(key, float(result[key]), now, cfg.pretrain_epochs)
        for key in ("test_loss", "test_accuracy", "random_guess_accuracy", "seconds", "num_parameters")
    ]
    c.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    out = run.root / PRETRAIN
    for path in (out / PRETRAIN_RESULT, out / PRETRAIN_SAMPLE, run.logs / "pretrain.log"):
        _log(c, rid, path)
    model = c.create_logged_model(
        experiment_id=experiment,
        name="model",
        source_run_id=rid,
        model_type="tensorflow",
        params={k: str(v) for k, v in params.items()},
    )
    c.log_model_artifacts(model.model_id, str(out / MODEL))
    c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    version = mlflow.register_model(f"models:/{model.model_id}", name)
    c.set_registered_model_alias(name, alias, version.version)
    c.set_terminated(rid, "FINISHED")
    log.info(
        "Registered the pretrained model as %s version %s (@%s), pretraining run %s", name, version.version, alias, rid
    )
    return {"version": str(version.version), "pretrain_run_id": rid}


def _log(c, rid: str, path: Path) -> None:
    if path.exists():
        c.log_artifact(rid, str(path), PRETRAIN)
