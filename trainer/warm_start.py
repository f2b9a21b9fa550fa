"""Warm start: round 0 begins with the weights of a registered model instead of a seeded initialisation.

The Airflow side resolves the config's ``warm_start`` (``models:/<name>@<alias>``) in MLflow's registry and
downloads that model version into the run directory (``warm_start/model``, MLflow's TensorFlow format;
``warm_start.json`` records which version). The trainer reads only that directory, so every chunk and every
resumed run starts from the same weights, whatever the alias points at later.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

DIRECTORY = "warm_start"  # inside the run directory
MODEL = "model"  # the downloaded MLflow model, inside DIRECTORY


class Error(Exception):
    """Base class for warm-start errors."""


class WarmStartMismatchError(Error, ValueError):
    """The registered model's weights do not fit the configured model."""


def model_dir(run_root: Path) -> Path:
    return Path(run_root) / DIRECTORY / MODEL


def load_weights(run_root: Path, template: tf.keras.Model, uri: str = "") -> tff.learning.models.ModelWeights:
    """The warm-start model's weights as TFF model weights, checked against ``template`` (the configured
    model): raises WarmStartMismatchError naming the first weight whose shape differs."""
    import mlflow.tensorflow  # noqa: PLC0415 - the trainer imports MLflow only where it needs it

    path = model_dir(run_root)
    if not (path / "MLmodel").is_file():
        raise Error(
            f"The warm start {uri or '(warm_start)'} was not downloaded to {path}. Fix: run the DAG's "
            "warm_start task first (it resolves the registered model and downloads it)."
        )
    loaded = mlflow.tensorflow.load_model(str(path), keras_model_kwargs={"compile": False})
    trainable = [np.asarray(v.numpy()) for v in loaded.trainable_weights]
    non_trainable = [np.asarray(v.numpy()) for v in loaded.non_trainable_weights]
    expected = [tuple(v.shape) for v in template.trainable_weights]
    got = [w.shape for w in trainable]
    if got != expected:
        first = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), min(len(got), len(expected))
        )
        raise WarmStartMismatchError(
            f"The warm start {uri or path} has {len(got)} trainable weights of shapes {got}; the configured model "
            f"{template.name!r} expects {len(expected)} of shapes {expected} (first difference at weight {first}). "
            "Fix: use the same model and width (e.g. rnn_units) the registered model was trained with, or point "
            "warm_start at another model."
        )
    return tff.learning.models.ModelWeights(trainable=trainable, non_trainable=non_trainable)
