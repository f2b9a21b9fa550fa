"""TFF's tutorial custom_federated_algorithms_2: Federated Averaging built from Federated Core (FC) primitives,
as a learning process the trainer runs, checkpoints and resumes (``learning_process``, see
trainer/learning_process_plugin.py)::

    learning_process: trainer.custom_federated_algorithms:fedavg_from_primitives

:func:`build_computations` writes the tutorial's cells for the run's model input: ``forward_pass`` (softmax
regression, mean cross-entropy of a batch), ``batch_loss``, ``batch_train`` (one step of
``tf.keras.optimizers.SGD``, as the tutorial), ``local_train`` (``tff.sequence_reduce`` of ``batch_train`` over
a client's batches, the learning rate captured by the inner ``batch_fn``), ``local_eval`` (``tff.sequence_reduce``
summing ``batch_loss``), ``federated_eval`` (``federated_broadcast``, ``federated_map(local_eval)``,
``federated_mean``) and ``federated_train`` (broadcast model and learning rate, ``federated_map(local_train)``,
``federated_mean`` of the client *models*, unweighted). The tutorial's types print the same, with 64 (or the
run's) inputs instead of 784: ``MODEL_TYPE`` ``<weights=float32[64,10],bias=float32[10]>``.

:func:`build_fedavg_from_primitives` wraps them in a ``tff.learning.templates.LearningProcess``. Its state,
:class:`FederatedCoreState`, holds the model (as ``ModelWeights`` of the run's ``softmax`` model, so
``get_model_weights``/``set_model_weights``, evaluation and export work as for any process) and the number of
finished rounds, from which round r's learning rate is ``learning_rate * decay**(r - 1)``: the tutorial's
``learning_rate = learning_rate * 0.9`` after each round, made a function of the state so that a resumed run
equals an uninterrupted one. Per round it reports ``client_work/train/loss``: the tutorial's printed loss,
``federated_eval`` of the new model on the round's clients (each client's *sum* of batch mean losses, averaged
over clients), ``client_work/federated_loss_before`` (the same for the incoming model: round 1's is the
initial loss, ``batches x ln(classes)`` per client at zero weights), the round's ``client_work/learning_rate``
and, beyond the tutorial, the new model's accuracy on the round's examples.

:func:`measure` is the recipe's reference measurement (the tutorial's "train on one client's digit" cells).
Part 1 of the tutorial (types, placements, ``get_average_temperature`` ...) is pinned by
tests/trainer/test_federated_core.py.
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

ModelWeights = tff.learning.models.ModelWeights


class Error(Exception):
    """Base class for errors of the Federated Core FedAvg."""


class FederatedCoreState(NamedTuple):
    """The server state: the global model and the number of finished rounds (which decides the next learning
    rate). Checkpointed as its flattened leaves: kernel, bias, round."""

    model_weights: Any
    round_num: Any


class Computations(NamedTuple):
    """The tutorial's computations for one model shape (see the module docstring), plus ``client_losses``
    (``federated_eval`` without the mean: each client's loss) and ``local_counts`` (correct predictions and
    examples of a client, for the accuracy metric)."""

    model_type: tff.Type
    batch_type: tff.Type
    batch_loss: Any
    batch_train: Any
    local_train: Any
    local_eval: Any
    federated_eval: Any
    federated_train: Any
    client_losses: Any
    local_counts: Any


def softmax_shape(weights_type) -> tuple[int, int]:
    """(inputs, classes) of a softmax regression's ``ModelWeights`` type; raises :class:`Error` otherwise."""
    trainable, non_trainable = weights_type.trainable, weights_type.non_trainable
    shapes = [tuple(t.shape) for t in trainable]
    if len(shapes) != 2 or len(shapes[0]) != 2 or shapes[1] != (shapes[0][1],) or len(non_trainable):
        raise Error(
            "fedavg_from_primitives trains the tutorial's softmax regression (one kernel [inputs, classes] and one "
            f"bias [classes], nothing else). Got trainable shapes {shapes} and {len(non_trainable)} non-trainable "
            "tensors. Fix: model='softmax'."
        )
    return shapes[0][0], shapes[0][1]


def _batch_computations(model_type, batch_type, num_features: int, num_classes: int) -> tuple[Any, Any]:
    """The tutorial's ``batch_loss`` and ``batch_train`` (its ``forward_pass``, ``x`` flattened to ``num_features``)."""

    @tf.function
    def forward_pass(model, batch):
        x = tf.reshape(batch["x"], [-1, num_features])
        predicted_y = tf.nn.softmax(tf.matmul(x, model["weights"]) + model["bias"])
        return -tf.reduce_mean(tf.reduce_sum(tf.one_hot(batch["y"], num_classes) * tf.math.log(predicted_y), axis=[1]))

    @tff.tensorflow.computation(model_type, batch_type)
    def batch_loss(model, batch):
        return forward_pass(model, batch)

    @tff.tensorflow.computation(model_type, batch_type, np.float32)
    def batch_train(initial_model, batch, learning_rate):
        model_vars = collections.OrderedDict(
            [(name, tf.Variable(name=name, initial_value=value)) for name, value in initial_model.items()]
        )
        optimizer = tf.keras.optimizers.SGD(learning_rate)

        @tf.function
        def _train_on_batch(model_vars, batch):
            with tf.GradientTape() as tape:
                loss = forward_pass(model_vars, batch)
            grads = tape.gradient(loss, model_vars)
            optimizer.apply_gradients(zip(tf.nest.flatten(grads), tf.nest.flatten(model_vars), strict=True))
            return model_vars

        return _train_on_batch(model_vars, batch)

    return batch_loss, batch_train


def _sequence_computations(model_type, batch_type, batch_loss, batch_train, num_features: int) -> tuple[Any, Any, Any]:
    """The tutorial's ``local_train`` and ``local_eval`` (``tff.sequence_reduce`` over a client's batches), and
    ``local_counts``: a client's correct predictions and examples (``tf.data`` reduce, for the accuracy metric)."""
    local_data_type = tff.SequenceType(batch_type)

    @tff.federated_computation(model_type, np.float32, local_data_type)
    def local_train(initial_model, learning_rate, all_batches):
        @tff.federated_computation((model_type, np.float32), batch_type)
        def batch_fn(model_with_lr, batch):
            model, lr = model_with_lr
            return batch_train(model, batch, lr), lr

        trained_model, _ = tff.sequence_reduce(all_batches, (initial_model, learning_rate), batch_fn)
        return trained_model

    @tff.federated_computation(model_type, local_data_type)
    def local_eval(model, all_batches):
        @tff.tensorflow.computation((model_type, np.float32), batch_type)
        def accumulate_evaluation(model_and_accumulator, batch):
            model, accumulator = model_and_accumulator
            return model, accumulator + batch_loss(model, batch)

        _, total_loss = tff.sequence_reduce(all_batches, (model, 0.0), accumulate_evaluation)
        return total_loss

    @tff.tensorflow.computation(model_type, local_data_type)
    def local_counts(model, all_batches):
        def add(counts, batch):
            x = tf.reshape(batch["x"], [-1, num_features])
            predicted = tf.argmax(tf.matmul(x, model["weights"]) + model["bias"], axis=1, output_type=tf.int64)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, tf.cast(batch["y"], tf.int64)), tf.int64))
            return counts[0] + correct, counts[1] + tf.size(batch["y"], out_type=tf.int64)

        correct, examples = all_batches.reduce((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), add)
        return collections.OrderedDict(correct=correct, examples=examples)

    return local_train, local_eval, local_counts


def build_computations(batch_spec, num_features: int, num_classes: int) -> Computations:
    """The tutorial's FC computations for batches of ``batch_spec`` (``OrderedDict(x=..., y=...)``; ``x`` is
    flattened to ``num_features`` inputs) and ``num_classes`` classes."""
    batch_type = tff.types.tensorflow_to_type(batch_spec)
    model_type = tff.types.tensorflow_to_type(
        collections.OrderedDict(
            weights=tf.TensorSpec([num_features, num_classes], tf.float32),
            bias=tf.TensorSpec([num_classes], tf.float32),
        )
    )
    batch_loss, batch_train = _batch_computations(model_type, batch_type, num_features, num_classes)
    local_train, local_eval, local_counts = _sequence_computations(
        model_type, batch_type, batch_loss, batch_train, num_features
    )
    server_model_type = tff.FederatedType(model_type, tff.SERVER)
    client_data_type = tff.FederatedType(tff.SequenceType(batch_type), tff.CLIENTS)

    @tff.federated_computation(server_model_type, client_data_type)
    def client_losses(model, data):
        return tff.federated_map(local_eval, [tff.federated_broadcast(model), data])

    @tff.federated_computation(server_model_type, client_data_type)
    def federated_eval(model, data):
        return tff.federated_mean(tff.federated_map(local_eval, [tff.federated_broadcast(model), data]))

    @tff.federated_computation(server_model_type, tff.FederatedType(np.float32, tff.SERVER), client_data_type)
    def federated_train(model, learning_rate, data):
        return tff.federated_mean(
            tff.federated_map(
                local_train, [tff.federated_broadcast(model), tff.federated_broadcast(learning_rate), data]
            )
        )

    return Computations(
        model_type,
        batch_type,
        batch_loss,
        batch_train,
        local_train,
        local_eval,
        federated_eval,
        federated_train,
        client_losses,
        local_counts,
    )


def computations_for(model_fn: Callable) -> tuple[Computations, tff.Type]:
    """(the tutorial's computations for ``model_fn``'s input and softmax shape, the model's weights type)."""
    with tf.Graph().as_default():
        model = model_fn()
        input_spec = model.input_spec
    weights_type = tff.learning.models.weights_type_from_model(model)
    num_features, num_classes = softmax_shape(weights_type)
    return build_computations(input_spec, num_features, num_classes), weights_type


class _StateComputations(NamedTuple):
    server_init: Any
    model_of: Any
    learning_rate_of: Any
    advance: Any
    get_model_weights: Any
    set_model_weights: Any


def _state_computations(weights_type, model_type, learning_rate: float, decay: float) -> _StateComputations:
    """The TensorFlow blocks on :class:`FederatedCoreState`: the zero state, the tutorial's model of a state, the
    state's learning rate (``learning_rate * decay**round_num``: rounds done so far), the state after a round, and
    the model-weights getter and setter of a LearningProcess."""

    @tff.tensorflow.computation
    def server_init():
        zeros = [tf.zeros(t.shape, t.dtype) for t in weights_type.trainable]
        return FederatedCoreState(ModelWeights(zeros, []), tf.constant(0, tf.int32))

    state_type = server_init.type_signature.result

    @tff.tensorflow.computation(state_type)
    def model_of(state):
        kernel, bias = state.model_weights.trainable
        return collections.OrderedDict(weights=kernel, bias=bias)

    @tff.tensorflow.computation(state_type)
    def learning_rate_of(state):
        factor = tf.pow(tf.constant(decay, tf.float64), tf.cast(state.round_num, tf.float64))
        return tf.cast(learning_rate * factor, tf.float32)

    @tff.tensorflow.computation(state_type, model_type)
    def advance(state, model):
        return FederatedCoreState(ModelWeights([model["weights"], model["bias"]], []), state.round_num + 1)

    @tff.tensorflow.computation(state_type)
    def get_model_weights(state):
        return state.model_weights

    @tff.tensorflow.computation(state_type, state_type.model_weights)
    def set_model_weights(state, weights):
        return FederatedCoreState(weights, state.round_num)

    return _StateComputations(server_init, model_of, learning_rate_of, advance, get_model_weights, set_model_weights)


def build_fedavg_from_primitives(
    model_fn: Callable, *, learning_rate: float, decay: float = 1.0
) -> tff.learning.templates.LearningProcess:
    """The tutorial's federated training as a LearningProcess: round r (1-based) runs ``federated_train`` at
    ``learning_rate * decay**(r - 1)`` from the state's model (zeros at ``initialize``, as the tutorial).

    Args:
      model_fn: builds the run's ``VariableModel``; it must be a softmax regression (``model: softmax``): only
        its input spec and weight shapes are used, the forward pass is the tutorial's.
      learning_rate: the first round's client SGD rate (the tutorial's 0.1).
      decay: the factor per round (the tutorial's 0.9; 1 = constant).

    Returns:
      A LearningProcess with state :class:`FederatedCoreState` and metrics ``client_work`` (``train``: loss,
      accuracy, num_examples; ``federated_loss_before``; ``learning_rate``).

    Raises:
      Error: the model is not a softmax regression, or the rates are not positive.
    """
    if not (learning_rate > 0 and decay > 0):
        raise Error(f"learning_rate and decay must be > 0. Got learning_rate={learning_rate}, decay={decay}.")
    comps, weights_type = computations_for(model_fn)
    state = _state_computations(weights_type, comps.model_type, learning_rate, decay)
    state_type = state.server_init.type_signature.result

    @tff.federated_computation
    def initialize_fn():
        return tff.federated_value(state.server_init(), tff.SERVER)

    @tff.tensorflow.computation(np.int64, np.int64)
    def accuracy(correct, examples):
        return tf.cast(correct, tf.float32) / tf.cast(examples, tf.float32)

    @tff.federated_computation(
        tff.FederatedType(state_type, tff.SERVER), tff.FederatedType(tff.SequenceType(comps.batch_type), tff.CLIENTS)
    )
    def next_fn(server_state, data):
        model = tff.federated_map(state.model_of, server_state)
        rate = tff.federated_map(state.learning_rate_of, server_state)
        loss_before = comps.federated_eval(model, data)
        trained = comps.federated_train(model, rate, data)
        counts = tff.federated_map(comps.local_counts, [tff.federated_broadcast(trained), data])
        correct, examples = tff.federated_sum(counts.correct), tff.federated_sum(counts.examples)
        train = collections.OrderedDict(
            loss=comps.federated_eval(trained, data),
            accuracy=tff.federated_map(accuracy, (correct, examples)),
            num_examples=examples,
        )
        metrics = collections.OrderedDict(
            client_work=collections.OrderedDict(train=train, federated_loss_before=loss_before, learning_rate=rate)
        )
        new_state = tff.federated_map(state.advance, (server_state, trained))
        return tff.learning.templates.LearningProcessOutput(new_state, tff.federated_zip(metrics))

    return tff.learning.templates.LearningProcess(
        initialize_fn, next_fn, state.get_model_weights, state.set_model_weights
    )


# The settings under which replacing the model by the mean of the clients' models is what the run asks for.
_AVERAGES_MODELS = {
    "aggregator": "mean",
    "compress": False,
    "server_learning_rate": 1.0,
    "server_momentum": 0.0,
    "client_gradient_clip": 0.0,
}


def fedavg_from_primitives(cfg: ExperimentConfig, model_fn: Callable) -> tff.learning.templates.LearningProcess:
    """The plug-in entry point: the tutorial's FedAvg at ``client_learning_rate``, decayed by
    ``client_learning_rate_decay`` per round. It averages the clients' models with ``tff.federated_mean``, so it
    refuses settings it would silently ignore (another aggregator, compression, a server step, gradient clipping)."""
    ignored = {key: getattr(cfg, key) for key, value in _AVERAGES_MODELS.items() if getattr(cfg, key) != value}
    if ignored:
        raise Error(
            f"fedavg_from_primitives replaces the model by the unweighted federated_mean of the clients' models (the "
            f"tutorial's federated_train): it has no aggregator, server step or clipping. Got {ignored}. Fix: "
            "aggregator='mean', compress=false, server_learning_rate=1, server_momentum=0, client_gradient_clip=0."
        )
    if cfg.model != "softmax":
        raise Error(
            f"fedavg_from_primitives trains the tutorial's softmax regression. Got model={cfg.model!r}. "
            "Fix: model='softmax'."
        )
    return build_fedavg_from_primitives(
        model_fn, learning_rate=cfg.client_learning_rate, decay=cfg.client_learning_rate_decay
    )


# -- the recipe's measurement ------------------------------------------------------------------------------


def tutorial_model(weights: ModelWeights) -> collections.OrderedDict:
    """The tutorial's model value ``OrderedDict(weights=..., bias=...)`` of a softmax regression's weights."""
    kernel, bias = (np.asarray(w, np.float32) for w in weights.trainable)
    return collections.OrderedDict(weights=kernel, bias=bias)


def one_label_property(
    comps: Computations, initial_model, datasets: list, client: int, learning_rate: float
) -> dict[str, float]:
    """The tutorial's "train on one client's digit" cells: ``local_train`` on ``datasets[client]`` alone from
    ``initial_model``, then every client's ``local_eval`` and the ``federated_eval`` before and after. The other
    clients' (``others_``) smallest loss after and largest before tell whether each of their losses rose."""
    trained = comps.local_train(initial_model, learning_rate, datasets[client])
    before = [float(v) for v in comps.client_losses(initial_model, datasets)]
    after = [float(v) for v in comps.client_losses(trained, datasets)]
    others = [i for i in range(len(datasets)) if i != client]
    return {
        "one_label_own_loss_before": before[client],
        "one_label_own_loss_after": after[client],
        "one_label_others_max_loss_before": max((before[i] for i in others), default=float("nan")),
        "one_label_others_min_loss_after": min((after[i] for i in others), default=float("nan")),
        "one_label_others_rising": sum(after[i] > before[i] for i in others),
        "one_label_others": len(others),
        "one_label_federated_loss_before": float(comps.federated_eval(initial_model, datasets)),
        "one_label_federated_loss_after": float(comps.federated_eval(trained, datasets)),
    }


def measure(exp) -> dict[str, float]:
    """The reference measurement: the closed-form initial loss of round 1's clients (mean over them of
    batches x ln(classes)); the one-label property from the run's round-0 weights, on round 1's batches of every
    training client, trained on the client holding digit 5 (the tutorial's), or the first client when none holds
    5 alone; and the last round's learning rate by the tutorial's rule."""
    from trainer import program  # noqa: PLC0415 - program imports recipe_results, which imports this module

    cfg = exp.cfg
    ids = exp.manifest.client_ids("train")
    training = ids[: len(ids) - cfg.heldout_clients]
    index = {cid: i for i, cid in enumerate(ids)}
    clients = {cid: program.read_client(exp, "train", cid) for cid in training}
    num_classes = program.model_num_classes(exp.manifest)
    first_round = program.sample_clients(cfg, 1, training)
    batches = [math.ceil(len(clients[cid].y) * cfg.local_epochs / cfg.batch_size) for cid in first_round]
    labels = {cid: np.unique(clients[cid].y) for cid in training}
    fives = [i for i, cid in enumerate(training) if labels[cid].tolist() == [5]]
    pick = fives[0] if fives else 0
    comps, _ = computations_for(exp.model_fn)
    initial = tutorial_model(exp.process.get_model_weights(program.initial_state(exp)))
    datasets = [program.client_dataset(exp, clients[cid], index[cid], 1) for cid in training]
    return {
        "closed_form_initial_loss": float(np.mean(batches)) * math.log(num_classes),
        "initial_batches_per_client": float(np.mean(batches)),
        "num_classes": num_classes,
        "one_label_client_digit": int(labels[training[pick]][0]) if len(labels[training[pick]]) == 1 else -1,
        **one_label_property(comps, initial, datasets, pick, cfg.client_learning_rate),
        "expected_last_learning_rate": cfg.client_learning_rate * cfg.client_learning_rate_decay ** (cfg.rounds - 1),
    }
