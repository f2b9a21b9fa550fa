"""The two learning algorithms of TFF's tutorials building_your_own_federated_learning_algorithm and
composing_learning_algorithms, as a user would plug them in (``learning_process``, see
trainer/learning_process_plugin.py)::

    learning_process: trainer.tutorial_algorithms:hand_built_fedavg
    learning_process: trainer.tutorial_algorithms:fedavg_with_gradient_clipping   # + client_gradient_clip

1. :func:`build_hand_built_fed_avg`: FedAvg written in TFF's Federated Core, as the first tutorial does —
   ``tff.tensorflow.computation`` blocks for the server's initial weights, the client update and the server
   update, and one ``tff.federated_computation`` that broadcasts, maps the client update, takes the
   (unweighted) ``tff.federated_mean`` and maps the server update. Two changes make it a
   ``tff.learning.templates.LearningProcess`` that the trainer can run, checkpoint and resume: the state holds
   ``ModelWeights`` (trainable and non-trainable) and the server optimizer's state, with
   ``get_model_weights``/``set_model_weights``; and clients send their update (initial - final weights) to
   which the server applies a ``tff.learning.optimizers`` optimizer (TFF 0.87 accepts no Keras optimizers).
   The tutorial's server update, "replace the weights by the mean of the client weights", is this with
   server SGD at learning rate 1. Its metrics are the model's, summed then finalised, as
   ``tff.learning.algorithms.build_unweighted_fed_avg`` reports them.
2. :func:`build_fed_avg_with_gradient_clipping`: the second tutorial's FedAvg variant, composed with
   ``tff.learning.templates.compose_learning_process`` from TFF's broadcast, a weighted mean, TFF's
   apply-optimizer finalizer and the tutorial's own client work
   (:func:`build_gradient_clipping_client_work`), which scales each local gradient to a global L2 norm of at
   most ``clip_norm`` before the client optimizer's step. It also measures, per round, the largest local
   gradient norm before and after clipping over all clients and batches (``client_work/...`` metrics).

Neither zeroes a client update with non-finite values as the built-ins do (nor do the tutorials).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks.config import ExperimentConfig
from trainer import aggregators, algorithms

ModelWeights = tff.learning.models.ModelWeights


class Error(Exception):
    """Base class for errors of the tutorial algorithms."""


class ServerState(NamedTuple):
    """The hand-built FedAvg's server state: the global model and the server optimizer's state."""

    model_weights: Any
    optimizer_state: Any


def _model_types(model_fn: Callable) -> tuple[tff.Type, tff.SequenceType, Callable]:
    """(weights type, client data type, metrics aggregation) of ``model_fn``'s model, built off the default graph."""
    with tf.Graph().as_default():
        model = model_fn()
        metrics_aggregation = tff.learning.metrics.sum_then_finalize(model.metric_finalizers())
    weights_type = tff.learning.models.weights_type_from_model(model)
    data_type = tff.SequenceType(tff.types.tensorflow_to_type(model.input_spec))
    return weights_type, data_type, metrics_aggregation


def _tensor_specs(weights) -> tuple[tf.TensorSpec, ...]:
    return tuple(tf.TensorSpec(w.shape, w.dtype) for w in tf.nest.flatten(weights))


@tf.function
def hand_built_client_update(model, dataset, server_weights, optimizer: tff.learning.optimizers.Optimizer):
    """The tutorial's client update: start from the server's weights, take one optimizer step per batch;
    returns (initial - final trainable weights, the model's unfinalised metrics)."""
    client_weights = ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, t: v.assign(t), client_weights, server_weights)
    optimizer_state = optimizer.initialize(_tensor_specs(client_weights.trainable))
    for batch in iter(dataset):
        with tf.GradientTape() as tape:
            outputs = model.forward_pass(batch, training=True)
        gradients = tape.gradient(outputs.loss, client_weights.trainable)
        optimizer_state, updated = optimizer.next(
            optimizer_state, tuple(tf.nest.flatten(client_weights.trainable)), tuple(tf.nest.flatten(gradients))
        )
        tf.nest.map_structure(lambda v, t: v.assign(t), tuple(tf.nest.flatten(client_weights.trainable)), updated)
    update = tf.nest.map_structure(tf.subtract, server_weights.trainable, client_weights.trainable)
    return update, model.report_local_unfinalized_metrics()


def build_hand_built_fed_avg(
    model_fn: Callable,
    *,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
) -> tff.learning.templates.LearningProcess:
    """FedAvg from the Federated Core (building_your_own_federated_learning_algorithm), client updates
    averaged uniformly: per round it equals ``build_unweighted_fed_avg`` with the same optimizers.

    Args:
      model_fn: no-argument constructor of a ``tff.learning.models.VariableModel``.
      client_optimizer: the clients' ``tff.learning.optimizers`` optimizer (fresh state every round).
      server_optimizer: applied to the mean client update (SGD at 1.0: the tutorial's "mean of client weights").

    Returns:
      A LearningProcess with state :class:`ServerState` and metrics ``client_work/train``.
    """
    weights_type, data_type, metrics_aggregation = _model_types(model_fn)

    @tff.tensorflow.computation
    def server_init():
        weights = ModelWeights.from_model(model_fn())
        weights = tf.nest.map_structure(tf.convert_to_tensor, weights)
        return ServerState(weights, server_optimizer.initialize(_tensor_specs(weights.trainable)))

    state_type = server_init.type_signature.result

    @tff.federated_computation
    def initialize_fn():
        return tff.federated_value(server_init(), tff.SERVER)

    @tff.tensorflow.computation(weights_type, data_type)
    def client_update_fn(server_weights, dataset):
        return hand_built_client_update(model_fn(), dataset, server_weights, client_optimizer)

    @tff.tensorflow.computation(state_type, weights_type.trainable)
    def server_update_fn(state, mean_update):
        optimizer_state, trainable = server_optimizer.next(
            state.optimizer_state,
            tuple(tf.nest.flatten(state.model_weights.trainable)),
            tuple(tf.nest.flatten(mean_update)),
        )
        weights = ModelWeights(list(trainable), list(state.model_weights.non_trainable))
        return ServerState(weights, optimizer_state)

    @tff.federated_computation(tff.FederatedType(state_type, tff.SERVER), tff.FederatedType(data_type, tff.CLIENTS))
    def next_fn(state, federated_dataset):
        weights_at_clients = tff.federated_broadcast(state.model_weights)
        updates, local_metrics = tff.federated_map(client_update_fn, (weights_at_clients, federated_dataset))
        mean_update = tff.federated_mean(updates)
        new_state = tff.federated_map(server_update_fn, (state, mean_update))
        metrics = tff.federated_zip(
            collections.OrderedDict(client_work=collections.OrderedDict(train=metrics_aggregation(local_metrics)))
        )
        return tff.learning.templates.LearningProcessOutput(new_state, metrics)

    @tff.tensorflow.computation(state_type)
    def get_model_weights(state):
        return state.model_weights

    @tff.tensorflow.computation(state_type, state_type.model_weights)
    def set_model_weights(state, weights):
        return ServerState(weights, state.optimizer_state)

    return tff.learning.templates.LearningProcess(initialize_fn, next_fn, get_model_weights, set_model_weights)


@tf.function
def gradient_clipping_client_update(
    model, dataset, server_weights, optimizer: tff.learning.optimizers.Optimizer, clip_norm: float
):
    """The composing tutorial's client update: each gradient is scaled to a global L2 norm <= ``clip_norm``
    before the optimizer's step. Returns (ClientResult weighted by examples, unfinalised metrics, largest
    gradient norm before clipping, largest after)."""
    client_weights = ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, t: v.assign(t), client_weights, server_weights)
    trainable = tuple(tf.nest.flatten(client_weights.trainable))
    optimizer_state = optimizer.initialize(_tensor_specs(trainable))
    num_examples = tf.constant(0.0)
    max_before = max_after = tf.constant(0.0)
    for batch in iter(dataset):
        with tf.GradientTape() as tape:
            outputs = model.forward_pass(batch, training=True)
        num_examples += tf.cast(outputs.num_examples, tf.float32)
        gradients = tuple(tf.nest.flatten(tape.gradient(outputs.loss, client_weights.trainable)))
        norm = tf.linalg.global_norm(gradients)
        scale = tf.minimum(1.0, clip_norm / norm)  # 1 when unclipped (clip_norm = inf, norm = 0): exact
        gradients = tuple(g * scale for g in gradients)
        max_before = tf.maximum(max_before, norm)
        max_after = tf.maximum(max_after, tf.linalg.global_norm(gradients))
        optimizer_state, updated = optimizer.next(optimizer_state, trainable, gradients)
        tf.nest.map_structure(lambda v, t: v.assign(t), trainable, updated)
    update = tf.nest.map_structure(tf.subtract, server_weights.trainable, client_weights.trainable)
    result = tff.learning.templates.ClientResult(update=update, update_weight=num_examples)
    return result, model.report_local_unfinalized_metrics(), max_before, max_after


def build_gradient_clipping_client_work(
    model_fn: Callable, optimizer: tff.learning.optimizers.Optimizer, *, clip_norm: float
) -> tff.learning.templates.ClientWorkProcess:
    """The tutorial's ``build_gradient_clipping_client_work`` with a ``tff.learning.optimizers`` optimizer and
    a clip norm (the tutorial's is 1; ``math.inf``: no clipping). Measurements: ``train`` (the model's
    metrics), ``max_gradient_norm_before_clip`` and ``max_gradient_norm_after_clip`` (over all clients)."""
    if not clip_norm > 0:
        raise Error(f"clip_norm must be > 0 (math.inf: no clipping). Got {clip_norm!r}.")
    weights_type, data_type, metrics_aggregation = _model_types(model_fn)

    @tff.federated_computation
    def initialize_fn():
        return tff.federated_value((), tff.SERVER)

    @tff.tensorflow.computation(weights_type, data_type)
    def client_update_fn(weights, dataset):
        return gradient_clipping_client_update(model_fn(), dataset, weights, optimizer, clip_norm)

    @tff.federated_computation(
        initialize_fn.type_signature.result,
        tff.FederatedType(weights_type, tff.CLIENTS),
        tff.FederatedType(data_type, tff.CLIENTS),
    )
    def next_fn(state, weights, client_data):
        result, local_metrics, before, after = tff.federated_map(client_update_fn, (weights, client_data))
        measurements = tff.federated_zip(
            collections.OrderedDict(
                train=metrics_aggregation(local_metrics),
                max_gradient_norm_before_clip=tff.federated_max(before),
                max_gradient_norm_after_clip=tff.federated_max(after),
            )
        )
        return tff.templates.MeasuredProcessOutput(state, result, measurements)

    return tff.learning.templates.ClientWorkProcess(initialize_fn, next_fn)


def build_fed_avg_with_gradient_clipping(
    model_fn: Callable,
    *,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    clip_norm: float,
    model_aggregator: tff.aggregators.WeightedAggregationFactory | None = None,
) -> tff.learning.templates.LearningProcess:
    """composing_learning_algorithms: FedAvg's building blocks with the gradient-clipping client work.
    With ``clip_norm=math.inf`` it equals ``build_weighted_fed_avg`` with the same optimizers.

    Args:
      model_aggregator: a weighted factory (default: ``tff.aggregators.MeanFactory()``, the tutorial's).
    """

    @tff.tensorflow.computation
    def initial_model_weights_fn():
        return tf.nest.map_structure(tf.convert_to_tensor, ModelWeights.from_model(model_fn()))

    weights_type = initial_model_weights_fn.type_signature.result
    client_work = build_gradient_clipping_client_work(model_fn, client_optimizer, clip_norm=clip_norm)
    factory = model_aggregator or tff.aggregators.MeanFactory()
    if not isinstance(factory, tff.aggregators.WeightedAggregationFactory):
        raise Error(
            f"model_aggregator must be a weighted aggregation factory (clients are weighted by their "
            f"examples). Got {type(factory).__name__}."
        )
    aggregator = factory.create(weights_type.trainable, tff.TensorType(np.float32))
    return tff.learning.templates.compose_learning_process(
        initial_model_weights_fn,
        tff.learning.templates.build_broadcast_process(weights_type),
        client_work,
        aggregator,
        tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type),
    )


# -- the plug-in entry points (learning_process: 'trainer.tutorial_algorithms:<function>') ----------------------


def hand_built_fedavg(cfg: ExperimentConfig, model_fn: Callable) -> tff.learning.templates.LearningProcess:
    """The hand-built FedAvg with the run's client SGD and server optimizer; it aggregates by a plain mean."""
    if cfg.aggregator != "mean" or cfg.compress:
        raise Error(
            f"hand_built_fedavg averages updates with tff.federated_mean; it has no aggregator setting. "
            f"Got aggregator={cfg.aggregator!r}, compress={cfg.compress}. Fix: aggregator='mean', "
            "compress=false, or learning_process='trainer.tutorial_algorithms:fedavg_with_gradient_clipping'."
        )
    if cfg.client_gradient_clip:
        raise Error(
            f"hand_built_fedavg does not clip gradients. Got client_gradient_clip={cfg.client_gradient_clip}. Fix: "
            "client_gradient_clip=0 (outside the build_your_own_algorithm recipe, which sets it), or "
            "learning_process='trainer.tutorial_algorithms:fedavg_with_gradient_clipping'."
        )
    return build_hand_built_fed_avg(
        model_fn, client_optimizer=algorithms.client_optimizer(cfg), server_optimizer=algorithms.server_optimizer(cfg)
    )


def fedavg_with_gradient_clipping(cfg: ExperimentConfig, model_fn: Callable) -> tff.learning.templates.LearningProcess:
    """The composed FedAvg with gradient clipping at ``cfg.client_gradient_clip`` (0: none), the run's
    optimizers and its (weighted) model aggregator."""
    factory = aggregators.build_model_aggregator(cfg)
    return build_fed_avg_with_gradient_clipping(
        model_fn,
        client_optimizer=algorithms.client_optimizer(cfg),
        server_optimizer=algorithms.server_optimizer(cfg),
        clip_norm=cfg.client_gradient_clip or math.inf,
        model_aggregator=factory,
    )
