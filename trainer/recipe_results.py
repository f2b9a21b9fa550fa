"""What a recipe's reference check needs beyond the run's metrics, measured in the trainer after the last
round and written to ``recipe_results.json`` (tasks/reference.py reads it as ``results.<key>``).

Each entry of :data:`MEASUREMENTS` takes the finished experiment and returns a flat dict of numbers.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks import atomic, metrics_log

log = logging.getLogger("fedflow.trainer")
# tasks.reference.RESULTS_FILE: not imported, since tasks.reference reaches the Airflow-side steps (lint-imports).
RESULTS_FILE = "recipe_results.json"


def replay(exp, process, state):
    """Runs the run's rounds again on another learning ``process`` from ``state``, with the same clients
    and batches as the run (the tff engine); yields (round, output) after each round."""
    from trainer import program  # noqa: PLC0415 - program imports this module

    ids = exp.manifest.client_ids("train")
    training_ids = ids[: len(ids) - exp.cfg.heldout_clients]
    clients = {cid: program.read_client(exp, "train", cid) for cid in training_ids}
    index = {cid: i for i, cid in enumerate(ids)}
    for round_num in range(1, exp.cfg.rounds + 1):
        datasets = [program.client_dataset(exp, clients[cid], index[cid], round_num)
                    for cid in program.sample_clients(exp.cfg, round_num, training_ids)]
        output = process.next(state, datasets)
        state = output.state
        yield round_num, output


class TutorialSoftmaxModel(tff.learning.models.VariableModel):
    """The image-classification tutorial's hand-written ``MnistModel``: softmax regression with its own
    variables, loss and metrics (sums of loss, correct predictions and examples, finalised as means),
    for ``num_features`` inputs and ``num_classes`` classes, zero-initialised."""

    def __init__(self, num_features: int, num_classes: int, input_spec) -> None:
        self._num_features, self._num_classes, self._input_spec = num_features, num_classes, input_spec
        self._weights = tf.Variable(tf.zeros([num_features, num_classes]), name="weights", trainable=True)
        self._bias = tf.Variable(tf.zeros([num_classes]), name="bias", trainable=True)
        self._num_examples = tf.Variable(0, name="num_examples", trainable=False, dtype=tf.int64)
        self._loss_sum = tf.Variable(0.0, name="loss_sum", trainable=False)
        self._accuracy_sum = tf.Variable(0.0, name="accuracy_sum", trainable=False)

    @property
    def trainable_variables(self):
        return [self._weights, self._bias]

    @property
    def non_trainable_variables(self):
        return []

    @property
    def local_variables(self):
        return [self._num_examples, self._loss_sum, self._accuracy_sum]

    @property
    def input_spec(self):
        return self._input_spec

    @tf.function
    def predict_on_batch(self, x, training=True):  # noqa: ARG002 - the interface's signature
        flat = tf.reshape(x, [-1, self._num_features])
        return tf.nn.softmax(tf.matmul(flat, self._weights) + self._bias)

    @tf.function
    def forward_pass(self, batch, training=True):
        predictions = self.predict_on_batch(batch["x"], training)
        y = tf.reshape(batch["y"], [-1])
        loss = -tf.reduce_mean(tf.reduce_sum(tf.one_hot(y, self._num_classes) * tf.math.log(predictions), axis=1))
        correct = tf.cast(tf.equal(tf.argmax(predictions, 1, output_type=tf.int64), y), tf.float32)
        n = tf.shape(y, out_type=tf.int64)[0]
        self._num_examples.assign_add(n)
        self._loss_sum.assign_add(loss * tf.cast(n, tf.float32))
        self._accuracy_sum.assign_add(tf.reduce_sum(correct))
        return tff.learning.models.BatchOutput(loss=loss, predictions=predictions, num_examples=n)

    @tf.function
    def report_local_unfinalized_metrics(self):
        return collections.OrderedDict(num_examples=[self._num_examples], loss=[self._loss_sum, self._num_examples],
                                       accuracy=[self._accuracy_sum, self._num_examples])

    def metric_finalizers(self):
        def mean(values):
            return values[0] / tf.cast(values[1], tf.float32)

        return collections.OrderedDict(num_examples=lambda values: values[0], loss=mean, accuracy=mean)

    @tf.function
    def reset_metrics(self):
        for variable in self.local_variables:
            variable.assign(tf.zeros_like(variable))


def image_classification(exp) -> dict[str, float]:
    """Federated image classification: the run's rounds again with the tutorial's hand-written model in
    place of the Keras one (same clients, batches, optimizers; both start from zeros), and the majority-
    class accuracy on the held-out clients' examples (what build_fed_eval's accuracy must beat)."""
    from trainer import algorithms, program  # noqa: PLC0415 - program imports this module

    cfg = exp.cfg
    shape = program.model_input_shape(exp.manifest)
    spec = collections.OrderedDict(x=tf.TensorSpec([None, *shape], tf.float32), y=tf.TensorSpec([None], tf.int64))
    num_features = int(np.prod(shape))
    process = tff.learning.algorithms.build_weighted_fed_avg(
        lambda: TutorialSoftmaxModel(num_features, exp.manifest.num_classes, spec),
        client_optimizer_fn=algorithms.client_optimizer(cfg), server_optimizer_fn=algorithms.server_optimizer(cfg),
        loop_implementation=algorithms.LOOP,
    )
    rows = {r["round"]: r for r in metrics_log.read_rows(exp.paths.metrics)}
    loss_diff = accuracy_diff = 0.0
    for round_num, output in replay(exp, process, process.initialize()):
        train = output.metrics["client_work"]["train"]
        loss_diff = max(loss_diff, abs(float(train["loss"]) - rows[round_num]["train_loss"]))
        accuracy_diff = max(accuracy_diff, abs(float(train["accuracy"]) - rows[round_num]["train_accuracy"]))
    ids = exp.manifest.client_ids("train")
    heldout = ids[len(ids) - cfg.heldout_clients :] if cfg.heldout_clients else []
    heldout_labels = np.concatenate([program.read_client(exp, "train", cid).y for cid in heldout]
                                    or [np.zeros(0, np.int64)])
    majority = float(np.bincount(heldout_labels).max() / len(heldout_labels)) if len(heldout_labels) else float("nan")
    return {"variable_model_max_loss_difference": loss_diff,
            "variable_model_max_accuracy_difference": accuracy_diff,
            "heldout_majority_class_accuracy": majority, "heldout_examples": int(len(heldout_labels))}


def rerun_final_weights(exp, **overrides) -> list[np.ndarray]:
    """The run's rounds again with ``overrides`` of its config (e.g. another aggregator), from the run's own
    round-0 weights, with the same clients and batches, on the tff engine: the final trainable weights."""
    import dataclasses  # noqa: PLC0415

    from trainer import algorithms, program  # noqa: PLC0415 - program imports this module

    cfg = dataclasses.replace(exp.cfg, **overrides)
    process = algorithms.build_learning_process(cfg, exp.model_fn)
    start = program.initial_state(exp)  # the run's round-0 weights, a function of the seed
    state = process.set_model_weights(process.initialize(), exp.process.get_model_weights(start))
    for _, output in replay(exp, process, state):
        state = output.state
    return [np.asarray(w) for w in process.get_model_weights(state).trainable]


def custom_aggregators(exp) -> dict[str, float]:
    """Custom aggregators: the tutorial's first example, and FedAvg with its factory as the mean's sum
    against FedAvg with TFF's plain mean from the same start (max |weight difference| after all rounds)."""
    from trainer import tutorial_aggregators  # noqa: PLC0415

    final = tf.nest.pack_sequence_as(exp.process.initialize(), exp.checkpoints.load_latest().leaves)
    ours = [np.asarray(w) for w in exp.process.get_model_weights(final).trainable]
    plain = rerun_final_weights(exp, aggregator="mean", custom_aggregator="")
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(ours, plain, strict=True))
    return {"max_weight_difference_vs_plain_mean": difference, **tutorial_aggregators.tutorial_example()}


def build_your_own_algorithm(exp) -> dict[str, float]:
    from trainer import algorithm_parity  # noqa: PLC0415

    return algorithm_parity.build_your_own_algorithm(exp)


def reconstruction(exp) -> dict[str, float]:
    """Federated reconstruction: the trivial predictors on the same split, and the server state's contents."""
    from trainer import reconstruction as fed_recon  # noqa: PLC0415 - it imports this module

    return fed_recon.measure(exp)


def recommended_aggregators(exp) -> dict[str, float]:
    """Recommended aggregators: clip tracking and the corrupted-client re-run (trainer/recommended_aggregators.py)."""
    from trainer import recommended_aggregators as measurements  # noqa: PLC0415 - it imports program

    return measurements.measure(exp)


def text_generation(exp) -> dict[str, float]:
    """Text generation: held-out loss/accuracy of the warm start, after fine-tuning and with the tutorial's client
    learning rate 0.5, and a generated sample (trainer/text_generation.py)."""
    from trainer import text_generation as measurement  # noqa: PLC0415

    return measurement.measure(exp)


def client_data(exp) -> dict[str, float]:
    """Working with ClientData: the staged train split as a ``tff.simulation.datasets.ClientData``, and the
    run's rounds (same sampled clients, from the run's round-0 weights) fed the tutorial's three ways."""
    from trainer import client_data as staged  # noqa: PLC0415
    from trainer import program  # noqa: PLC0415 - program imports this module

    cfg = exp.cfg
    data = staged.StagedClientData(exp.manifest, "train")
    spec_matches = data.create_tf_dataset_for_client(data.client_ids[0]).element_spec == data.element_type_structure
    x_name, y_name = data.element_type_structure
    preprocessed = data.preprocess(staged.model_input_preprocess(
        program.model_input_shape(exp.manifest), x_name, y_name, batch_size=cfg.batch_size,
        local_epochs=cfg.local_epochs))
    log.info("dataset_computation: %s; preprocessed: %s", data.dataset_computation.type_signature,
             preprocessed.dataset_computation.type_signature)
    ids = exp.manifest.client_ids("train")
    training_ids = ids[: len(ids) - cfg.heldout_clients]
    cohorts = [c for r in range(1, cfg.rounds + 1) if (c := program.sample_clients(cfg, r, training_ids))]
    results = staged.three_ways(exp.process, preprocessed, program.initial_state(exp), cohorts)
    return {**results, "element_spec_matches": float(spec_matches), "client_data_clients": len(data.client_ids),
            "rounds_compared": len(cohorts)}


def accelerators(exp) -> dict[str, float]:
    """Simulations with accelerators: the tutorial's VGG-like models' parameter counts (10 classes) at the
    run's input size and at EMNIST's 28x28x1, and this run's seconds per round (after the first, which
    traces the computation) under its max_concurrent_computation_calls."""
    from trainer import models, program  # noqa: PLC0415 - program imports this module

    shapes = {"": program.model_input_shape(exp.manifest), "_28x28": (28, 28, 1)}
    counts = {f"{name}_parameters{suffix}": models.build_keras_model(name, shape, 10).count_params()
              for name in models.VGG_BLOCKS for suffix, shape in shapes.items()}
    rows = metrics_log.read_rows(exp.paths.metrics)
    timed = [r["round_seconds"] for r in rows if r["round"] > 1] or [r["round_seconds"] for r in rows]
    return {**counts, "seconds_per_round": float(np.mean(timed)), "first_round_seconds": rows[0]["round_seconds"],
            "rounds_timed": len(timed), "clients_per_round": exp.cfg.clients_per_round,
            "max_concurrent_computation_calls": exp.cfg.max_concurrent_computation_calls}


def custom_federated_algorithms(exp) -> dict[str, float]:
    """Custom federated algorithms (the Federated Core): the closed-form initial loss and the one-label property
    (trainer/custom_federated_algorithms.py)."""
    from trainer import custom_federated_algorithms as federated_core  # noqa: PLC0415 - it imports program

    return federated_core.measure(exp)


def random_noise_generation(exp) -> dict[str, float]:
    """Random noise generation: the tutorial's seeded values and pitfall, and the run's DP noise replayed
    (trainer/random_noise.py)."""
    from trainer import random_noise  # noqa: PLC0415

    return random_noise.measure(exp)


def jax_support(exp) -> dict[str, float]:
    """JAX support: the tutorial's JAX computations traced and typed, TFF's refusal to run them, and the jax
    engine's round against the tff and hybrid engines' (trainer/jax_tutorial.py)."""
    from trainer import jax_tutorial  # noqa: PLC0415 - imports jax, needed by this recipe only

    return jax_tutorial.measure(exp)


def sparse_federated_learning(exp) -> dict[str, float]:
    """federated_select and sparse federated learning: the tutorials' examples, what each client received and
    moved, and the trivial baseline (trainer/sparse_training.py)."""
    from trainer import sparse_training  # noqa: PLC0415 - it imports this module

    return sparse_training.measure(exp)


MEASUREMENTS: dict[str, Callable] = {"image_classification": image_classification,
                                     "custom_aggregators": custom_aggregators,
                                     "build_your_own_algorithm": build_your_own_algorithm,
                                     "reconstruction": reconstruction,
                                     "recommended_aggregators": recommended_aggregators,
                                     "text_generation": text_generation,
                                     "client_data": client_data,
                                     "accelerators": accelerators,
                                     "custom_federated_algorithms": custom_federated_algorithms,
                                     "random_noise_generation": random_noise_generation,
                                     "jax_support": jax_support,
                                     "sparse_federated_learning": sparse_federated_learning,
                                     }


def measure(exp) -> dict[str, float] | None:
    """Runs the recipe's measurement (if it has one) and writes ``recipe_results.json``."""
    if exp.cfg.recipe not in MEASUREMENTS:
        return None
    results = MEASUREMENTS[exp.cfg.recipe](exp)
    atomic.write_json(exp.paths.root / RESULTS_FILE, results)
    log.info("Recipe %s measured: %s", exp.cfg.recipe, results)
    return results
