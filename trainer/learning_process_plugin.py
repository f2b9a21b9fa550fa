"""The plug-in point for a user's learning algorithm: ``learning_process`` -> a TFF learning process.

A run with ``learning_process: 'package.module:function'`` trains the process that function builds instead
of the built-in ``algorithm`` (trainer/algorithms.py). The function is called with (config, model_fn) —
``model_fn`` builds the run's ``tff.learning.models.VariableModel`` — and returns a
``tff.learning.templates.LearningProcess`` whose model weights are the run's model's weights. The trainer
treats it like a built-in: the round-0 weights are set with ``set_model_weights`` (seeded), the state is
checkpointed as its flattened leaves and restored into ``initialize()``'s structure (so a resumed run
continues exactly), ``get_model_weights`` feeds evaluation and the exported model, and ``metrics`` go to
``metrics.jsonl``: ``client_work/train`` (loss, accuracy, examples) as the built-ins report it, other
numeric ``client_work`` and ``aggregator`` measurements flattened into ``client_work/...`` keys.

The examples of TFF's tutorials are in trainer/tutorial_algorithms.py. The format of the name is checked
where the run is resolved (tasks/config.py, without TensorFlow); import errors and a wrong return type are
found here, when the trainer starts, as :class:`LearningProcessPluginError` naming the fix.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow_federated as tff

from tasks.config import ExperimentConfig
from trainer import hooks


class Error(Exception):
    """Base class for learning-process plug-in errors."""


class LearningProcessPluginError(Error):
    """``learning_process`` cannot be imported, or what it builds does not train the run's model."""


def load_learning_process(cfg: ExperimentConfig, model_fn: Callable) -> tff.learning.templates.LearningProcess:
    """Imports ``module:function`` from ``cfg.learning_process``, calls it with (cfg, model_fn) and checks the
    result: a LearningProcess whose ``get_model_weights`` returns the weights of ``model_fn``'s model.

    Raises:
      LearningProcessPluginError: the module or function cannot be imported, is not callable, or returns
        something else than a LearningProcess for this model.
    """
    name = cfg.learning_process
    build = hooks.import_function("learning_process", name, LearningProcessPluginError, "config, model_fn")
    process = build(cfg, model_fn)
    if not isinstance(process, tff.learning.templates.LearningProcess):
        raise LearningProcessPluginError(
            f"learning_process {name!r} must return a tff.learning.templates.LearningProcess (e.g. from "
            "tff.learning.templates.compose_learning_process, or LearningProcess(initialize, next, "
            f"get_model_weights, set_model_weights)). Got {type(process).__name__}."
        )
    _check_model_weights(name, process, model_fn)
    return process


def _check_model_weights(name: str, process: tff.learning.templates.LearningProcess, model_fn: Callable) -> None:
    import tensorflow as tf  # noqa: PLC0415 - TFF imports it already

    with tf.Graph().as_default():
        expected = tff.learning.models.weights_type_from_model(model_fn())
    got = process.get_model_weights.type_signature.result
    if not expected.is_assignable_from(got):
        raise LearningProcessPluginError(
            f"learning_process {name!r}: get_model_weights must return the run's model weights "
            f"(tff.learning.models.ModelWeights of model_fn's model) {expected}. Got {got}. "
            "Fix: build the process from the model_fn it is given."
        )
