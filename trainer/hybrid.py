"""The ``hybrid`` engine: client work in TensorFlow in the trainer process, aggregation in TFF.

The pip build of TFF 0.87 runs every computation in ``worker_binary``, compiled without CUDA
(google-parfait/tensorflow-federated#4600), so the ``tff`` engine cannot use a GPU. Here a round is:

1. **Client work**, all sampled clients in one ``tf.function`` call: a graph loop over the clients,
   each running its local steps over its batches (sliced from one tensor of the round's examples,
   not a ``tf.data`` pipeline: ~2 ms less per client, same batches). The model stays on the device
   (``/GPU:0`` when TensorFlow sees one) for the whole cohort; one host round trip per round. The
   step is TFF's own: the same ``tff.learning.models.VariableModel`` (``forward_pass``, metrics),
   the same ``tff.learning.optimizers`` client optimizer with the hyper-parameters held in the
   learning state, update = initial - final weights, a client update with a non-finite value is
   zeroed with weight 0 and its metrics dropped (``model_delta_client_work``,
   ``proximal_client_work``, ``fed_sgd._build_client_update`` in TFF 0.87).
2. **Aggregation** by the very TFF aggregation process the ``tff`` engine composes (mean, robust,
   DP, compression, secure, a user's factory), created from its factory and called from Python:
   clipping, zeroing, noise and quantisation keep TFF's semantics and measurements.
3. **Server step**: the same ``tff.learning.optimizers`` server optimizer, applied as TFF's
   ``apply_optimizer_finalizer`` does (a non-finite aggregate is rejected).

The state is TFF's ``LearningAlgorithmState`` itself, so checkpoints, resume and the metrics stream
are shared with the ``tff`` engine and a run can change engine between chunks. Parity per round is
the contract (tests/trainer/test_hybrid.py).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.aggregators import factory_utils
from tensorflow_federated.python.learning import tensor_utils

from tasks.config import ExperimentConfig
from trainer import aggregators, algorithms, client_updates, stacked

ModelWeights = tff.learning.models.ModelWeights


class Error(Exception):
    """Base class for hybrid-engine errors."""


@dataclasses.dataclass(frozen=True)
class Cohort:
    """One round's sampled clients, ready for one call: their examples, each client's in its training
    order (its ``local_epochs`` shuffles), concatenated; client k owns rows ``starts[k]:starts[k]+lengths[k]``."""

    x: np.ndarray
    y: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    # (x [K, steps, batch, features], y, mask) for the lock-step path (trainer/stacked.py), when it is used.
    padded: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # The factor each client's update is multiplied by before aggregation (``corrupt_clients``); None = honest.
    update_scales: np.ndarray | None = None

    @classmethod
    def of(cls, examples: Sequence[tuple[np.ndarray, np.ndarray]], x_shape: tuple[int, ...]) -> Cohort:
        lengths = np.array([len(y) for _, y in examples], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        if not examples:
            return cls(np.zeros((0, *x_shape), np.float32), np.zeros(0, np.int64), starts[:0], lengths)
        x = np.concatenate([x for x, _ in examples]).astype(np.float32, copy=False)
        y = np.concatenate([y for _, y in examples]).astype(np.int64, copy=False)
        return cls(x, y, starts, lengths)

    def __len__(self) -> int:
        return len(self.lengths)


class ClientWork(NamedTuple):
    """A cohort's local training: the summed unfinalized metrics, and either each client's update
    (``updates``: per weight, stacked [K, ...]; ``client_weights`` [K]) or their plain mean (``mean``,
    per weight) when TFF's default mean is computed with the client work."""

    unfinalized: Mapping
    updates: list[np.ndarray] | None = None
    client_weights: np.ndarray | None = None
    mean: list | None = None


def _client_slices(cohort: Cohort) -> tuple[list[np.ndarray], list[np.ndarray]]:
    return ([cohort.x[a : a + n] for a, n in zip(cohort.starts, cohort.lengths, strict=True)],
            [cohort.y[a : a + n] for a, n in zip(cohort.starts, cohort.lengths, strict=True)])


def aggregation_process(cfg: ExperimentConfig, update_type: tff.Type) -> tff.templates.AggregationProcess:
    """The aggregation process the ``tff`` engine's learning process composes for ``cfg``: the same
    factory (``aggregators.build_model_aggregator``), TFF's default mean when there is none, and an
    unweighted factory wrapped to take (and ignore) weights, as ``build_unweighted_fed_avg`` does."""
    factory = aggregators.build_model_aggregator(cfg)
    weighted = aggregators.is_weighted(cfg, factory)
    if factory is None:
        factory = tff.aggregators.MeanFactory() if weighted else tff.aggregators.UnweightedMeanFactory()
    if not weighted:
        factory = factory_utils.as_weighted_aggregator(factory)
    return factory.create(update_type, tff.TensorType(np.float32))


class HybridEngine:
    """Runs rounds of ``cfg.algorithm`` on the learning state of ``process`` (see module docstring).

    Build it after every TFF process of the run: it calls ``model_fn`` for its own model, and a later
    ``model_fn`` call (TFF tracing) leaves earlier Keras models in an invalid state.
    """

    def __init__(self, cfg: ExperimentConfig, model_fn: Callable[[], tff.learning.models.VariableModel],
                 process: tff.learning.templates.LearningProcess, *, lock_step: bool | None = None) -> None:
        """``lock_step``: train the cohort's clients in lock-step (trainer/stacked.py); None = wherever it
        applies (dense-only models, local SGD), False = always one client after another."""
        if cfg.algorithm not in algorithms.ALGORITHMS:
            raise Error(f"The hybrid engine runs {sorted(algorithms.ALGORITHMS)}. Got {cfg.algorithm!r}.")
        self.cfg = cfg
        self.process = process
        state_type = process.initialize.type_signature.result.member
        update_type = state_type.global_model_weights.trainable
        self.aggregation = aggregation_process(cfg, update_type)
        factory = aggregators.build_model_aggregator(cfg)
        self.weighted = aggregators.is_weighted(cfg, factory)
        # No factory is TFF's plain (weighted) mean: computed in the client-work graph with MeanFactory's
        # arithmetic, so the updates never leave the device. Every other aggregator is TFF's process.
        self.in_graph_mean = factory is None and not cfg.corrupt_clients  # corrupting needs each client's update
        self.fedsgd = cfg.algorithm == "fedsgd"
        self.proximal_strength = cfg.proximal_strength if cfg.algorithm == "fedprox" else 0.0
        self.client_optimizer = algorithms.client_optimizer(cfg)
        self.server_optimizer = algorithms.server_optimizer(cfg)
        self.device = "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
        with tf.device(self.device):
            self.model = model_fn()
        trainable_specs = [tf.TensorSpec(t.shape, t.dtype) for t in update_type]
        non_trainable_specs = [tf.TensorSpec(t.shape, t.dtype) for t in state_type.global_model_weights.non_trainable]
        x_spec = self.model.input_spec["x"]
        # The client optimizer's hyper-parameters live in the learning state (``client_work``), flattened.
        self._client_work_structure = process.initialize().client_work
        hparams_spec = [tf.TensorSpec(np.shape(v), tf.as_dtype(np.asarray(v).dtype))
                        for v in tf.nest.flatten(self._client_work_structure)]
        signature = [
            trainable_specs, non_trainable_specs, hparams_spec,
            tf.TensorSpec(x_spec.shape, x_spec.dtype), tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int64),
        ]
        self.train_cohort = tf.function(self._train_cohort, input_signature=signature)
        self.train_cohort_mean = tf.function(self._train_cohort_mean, input_signature=signature)
        self.lock_step = self._lock_step_clients(hparams_spec) if lock_step is not False else None
        if lock_step and self.lock_step is None:
            raise Error("lock_step needs a Flatten/Dense model trained by local SGD (not fedsgd). "
                        "Fix: lock_step=None to use it where it applies.")
        if self.lock_step is not None:
            features = int(np.prod(x_spec.shape[1:]))
            padded = [tf.TensorSpec([None, None, cfg.batch_size, features], tf.float32),
                      tf.TensorSpec([None, None, cfg.batch_size], tf.int64),
                      tf.TensorSpec([None, None, cfg.batch_size], tf.float32)]
            self.train_lock_step = tf.function(
                lambda w, lr, x, y, m: self.lock_step.train(w, lr, x, y, m, reduce_mean=False),
                input_signature=[trainable_specs, tf.TensorSpec([], tf.float32), *padded])
            self.train_lock_step_mean = tf.function(
                lambda w, lr, x, y, m: self.lock_step.train(w, lr, x, y, m, reduce_mean=True),
                input_signature=[trainable_specs, tf.TensorSpec([], tf.float32), *padded])
        self._server_step = tf.function(self._apply_server_optimizer)

    def _lock_step_clients(self, hparams_spec) -> stacked.StackedDenseClients | None:
        layers = stacked.dense_layers(getattr(self.model, "_keras_model", None) or tf.keras.Sequential())
        names = [m.name for m in self.model.get_metrics()]
        # The lock-step path implements plain SGD (w - lr * g) alone: the client optimizer's hyper-parameters
        # must be just its learning rate (momentum would add more). FedAvg keeps them in the learning state
        # (client_work); FedProx's client work has no state and uses the optimizer's own.
        specs = [tf.TensorSpec(v.shape, v.dtype) for v in self.model.trainable_variables]
        own = self.client_optimizer.get_hparams(self.client_optimizer.initialize(specs))
        keys = list(self._client_work_structure) if isinstance(self._client_work_structure, dict) else []
        plain_sgd = list(own) == ["learning_rate"] and keys in ([], ["learning_rate"]) and len(hparams_spec) == len(keys)
        self._learning_rate_index = 0 if keys else None
        if self.fedsgd or layers is None or sorted(names) != sorted(stacked.METRICS) or not plain_sgd:
            return None
        return stacked.StackedDenseClients(layers, proximal_strength=self.proximal_strength, weighted=self.weighted)

    def prepare(self, examples: Sequence[tuple[np.ndarray, np.ndarray]], x_shape: tuple[int, ...]) -> Cohort:
        """A round's cohort in the layout the engine trains it from (run it in a background thread)."""
        cohort = Cohort.of(examples, x_shape)
        if self.lock_step is None:
            return cohort
        return dataclasses.replace(cohort, padded=stacked.pad_cohort(cohort.x, cohort.y, cohort.starts, cohort.lengths,
                                                                     self.cfg.batch_size))

    # -- one round -------------------------------------------------------------------------------
    def next(self, state, cohort: Cohort):
        """One round: returns (new state, metrics structured as the TFF learning process reports them)."""
        return self.finish_round(state, cohort, self.client_work(state, cohort))

    def client_work(self, state, cohort: Cohort) -> ClientWork:
        """The cohort's local training from the state's global model (the part an engine replaces)."""
        weights = state.global_model_weights
        trainable = [tf.convert_to_tensor(w) for w in weights.trainable]
        non_trainable = [tf.convert_to_tensor(w) for w in weights.non_trainable]
        hparams = [tf.convert_to_tensor(v) for v in tf.nest.flatten(state.client_work)]
        if self.lock_step is not None and cohort.padded is None:
            cohort = self.prepare(list(zip(*_client_slices(cohort), strict=True)), cohort.x.shape[1:])
        if cohort.padded is not None:
            train, train_mean = self.train_lock_step, self.train_lock_step_mean
            rate = hparams[0] if self._learning_rate_index is not None else self.cfg.client_learning_rate
            arguments = (trainable, tf.cast(rate, tf.float32), *cohort.padded)
        else:
            train, train_mean = self.train_cohort, self.train_cohort_mean
            arguments = (trainable, non_trainable, hparams, cohort.x, cohort.y, cohort.starts, cohort.lengths)
        if self.in_graph_mean:
            with tf.device(self.device):
                aggregate, unfinalized = train_mean(*arguments)
            return ClientWork(unfinalized, mean=list(aggregate))
        with tf.device(self.device):
            updates, client_weights, unfinalized = train(*arguments)
        return ClientWork(unfinalized, updates=[u.numpy() for u in updates], client_weights=client_weights.numpy())

    def finish_round(self, state, cohort: Cohort, work: ClientWork):
        """Aggregation (TFF's process, or the in-graph mean) and the server step after ``work``: the new
        state and the round's metrics."""
        weights = state.global_model_weights
        trainable = [tf.convert_to_tensor(w) for w in weights.trainable]
        if work.mean is not None:
            aggregate = [tf.convert_to_tensor(u) for u in work.mean]
            aggregator_state, measurements = state.aggregator, collections.OrderedDict()  # TFF's mean reports none
            norms = {}
        else:
            updates = work.updates
            per_client = [[u[k] for u in updates] for k in range(len(cohort))]
            if cohort.update_scales is not None:  # the fault: a client sends its update scaled (corrupt_clients)
                per_client = [[u * scale for u in update] for update, scale in zip(per_client, cohort.update_scales,
                                                                                   strict=True)]
            norms = client_updates.norm_measurements(per_client, client_updates.clip_target_quantile(self.cfg))
            output = self.aggregation.next(state.aggregator, per_client, list(work.client_weights))
            aggregate = [tf.convert_to_tensor(u) for u in output.result]
            aggregator_state, measurements = output.state, output.measurements
        unfinalized = work.unfinalized
        opt_state = tf.nest.map_structure(tf.convert_to_tensor, state.finalizer)
        with tf.device(self.device):
            new_opt_state, new_trainable, rejected = self._server_step(opt_state, trainable, aggregate)
        new_state = state._replace(
            global_model_weights=ModelWeights(
                trainable=[w.numpy() for w in new_trainable], non_trainable=list(weights.non_trainable)
            ),
            aggregator=aggregator_state,
            finalizer=tf.nest.pack_sequence_as(state.finalizer, [t.numpy() for t in tf.nest.flatten(new_opt_state)]),
        )
        metrics = collections.OrderedDict(
            distributor=(),
            client_work=collections.OrderedDict(train=self._finalize(unfinalized)),
            aggregator=measurements,
            finalizer=collections.OrderedDict(update_non_finite=int(rejected)),
            client_updates=norms,
        )
        return new_state, metrics

    def _finalize(self, unfinalized) -> collections.OrderedDict:
        """TFF's ``sum_then_finalize`` on the summed client metrics: each Keras metric takes the sums as
        its state and reports ``result()`` (TFF's own finalizers rebuild metrics inside a trace and
        cannot run eagerly twice)."""
        finalized = collections.OrderedDict()
        for metric in self.model.get_metrics():
            for variable, value in zip(metric.variables, unfinalized[metric.name], strict=True):
                variable.assign(value)
            finalized[metric.name] = metric.result().numpy()
        return finalized

    # -- the compiled parts ------------------------------------------------------------------------
    def _apply_server_optimizer(self, opt_state, trainable, update):
        """``apply_optimizer_finalizer.next`` of TFF 0.87: one optimizer step with the aggregate as the
        gradient; an aggregate with a non-finite value is rejected (state and weights unchanged)."""
        new_state, new_weights = self.server_optimizer.next(opt_state, list(trainable), list(update))
        new_state = tf.nest.pack_sequence_as(opt_state, tf.nest.flatten(new_state))
        _, non_finite = tensor_utils.zero_all_if_any_non_finite(update)
        if non_finite > 0:
            return opt_state, list(trainable), non_finite
        return new_state, list(new_weights), non_finite

    def _train_cohort_mean(self, trainable, non_trainable, hparams, x, y, starts, lengths):
        """All clients of a round and TFF's plain mean in one graph: ``MeanFactory`` (weighted: the sum of
        weight x update over the sum of weights) or ``UnweightedMeanFactory`` (the sum over the number of
        clients), with ``tf.math.divide`` as they use (a zero total weight gives a non-finite aggregate,
        which the server step rejects). Returns (the mean update, the summed unfinalized metrics)."""
        return self._train_cohort(trainable, non_trainable, hparams, x, y, starts, lengths, reduce_mean=True)

    def _train_cohort(self, trainable, non_trainable, hparams, x, y, starts, lengths, reduce_mean=False):
        """All clients of a round in one graph. Returns (stacked updates [K, ...] per weight, client
        weights [K], the sum of the clients' unfinalized metrics); with ``reduce_mean`` see
        :meth:`_train_cohort_mean`."""
        model = self.model
        model_weights = ModelWeights.from_model(model)
        num_clients = tf.shape(starts)[0]
        update_arrays = [
            tf.TensorArray(w.dtype, size=num_clients, element_shape=w.shape) for w in model_weights.trainable
        ]
        weight_array = tf.TensorArray(tf.float32, size=num_clients, element_shape=[])
        weighted_sums = [tf.zeros_like(w) for w in trainable]
        weight_sum = tf.constant(0.0)
        model.reset_metrics()
        metric_sums = tf.nest.map_structure(tf.zeros_like, model.report_local_unfinalized_metrics())
        for k in tf.range(num_clients):
            tf.nest.map_structure(lambda v, t: v.assign(t), model_weights.trainable, list(trainable))
            tf.nest.map_structure(lambda v, t: v.assign(t), model_weights.non_trainable, list(non_trainable))
            model.reset_metrics()
            client_x = x[starts[k] : starts[k] + lengths[k]]
            client_y = y[starts[k] : starts[k] + lengths[k]]
            if self.fedsgd:
                update, num_examples = self._client_gradient(model_weights, client_x, client_y, lengths[k])
            else:
                update, num_examples = self._client_training(model_weights, trainable, hparams, client_x, client_y,
                                                             lengths[k])
            update, non_finite = tensor_utils.zero_all_if_any_non_finite(update)
            if non_finite > 0:
                weight = tf.constant(0.0)
                model.reset_metrics()
            elif self.weighted:
                weight = tf.cast(num_examples, tf.float32)
            else:
                weight = tf.constant(1.0)
            if reduce_mean:
                weighted_sums = [s + u * weight if self.weighted else s + u
                                 for s, u in zip(weighted_sums, update, strict=True)]
                weight_sum += weight if self.weighted else 1.0
            else:
                update_arrays = [a.write(k, u) for a, u in zip(update_arrays, update, strict=True)]
                weight_array = weight_array.write(k, weight)
            metric_sums = tf.nest.map_structure(tf.add, metric_sums, model.report_local_unfinalized_metrics())
        if reduce_mean:
            return [tf.math.divide(s, weight_sum) for s in weighted_sums], metric_sums
        return [a.stack() for a in update_arrays], weight_array.stack(), metric_sums

    def _batches(self, length):
        return (length + self.cfg.batch_size - 1) // self.cfg.batch_size

    def _client_training(self, model_weights, initial, hparams, x, y, length):
        """Local training (``model_delta_client_work``; FedProx: ``proximal_client_work``)."""
        batch_size = self.cfg.batch_size
        optimizer = self.client_optimizer
        specs = tuple(tf.TensorSpec(v.shape, v.dtype) for v in model_weights.trainable)
        opt_state = optimizer.initialize(specs)
        if hparams:
            structure = tf.nest.map_structure(lambda _: 0, self._client_work_structure)
            opt_state = optimizer.set_hparams(opt_state, tf.nest.pack_sequence_as(structure, hparams))
        num_examples = tf.zeros([], tf.int64)
        for i in tf.range(self._batches(length)):
            batch = collections.OrderedDict(x=x[i * batch_size : (i + 1) * batch_size],
                                            y=y[i * batch_size : (i + 1) * batch_size])
            with tf.GradientTape() as tape:
                output = self.model.forward_pass(batch, training=True)
            gradients = tape.gradient(output.loss, model_weights.trainable)
            if self.proximal_strength > 0.0:
                # TFF 0.87's term, kept for parity: mu * (initial - current).
                gradients = [g + self.proximal_strength * (w0 - w)
                             for g, w, w0 in zip(gradients, model_weights.trainable, initial, strict=True)]
            opt_state, new_weights = optimizer.next(
                opt_state, tuple(model_weights.trainable), tuple(gradients)
            )
            for variable, value in zip(model_weights.trainable, new_weights, strict=True):
                variable.assign(value)
            num_examples += tf.cast(output.num_examples, tf.int64)
        update = [w0 - w for w0, w in zip(initial, model_weights.trainable, strict=True)]
        return update, num_examples

    def _client_gradient(self, model_weights, x, y, length):
        """FedSGD's client: the example-weighted mean gradient at the global model (``fed_sgd``)."""
        batch_size = self.cfg.batch_size
        sums = [tf.zeros_like(v) for v in model_weights.trainable]
        num_examples = tf.constant(0.0)
        for i in tf.range(self._batches(length)):
            batch = collections.OrderedDict(x=x[i * batch_size : (i + 1) * batch_size],
                                            y=y[i * batch_size : (i + 1) * batch_size])
            with tf.GradientTape() as tape:
                output = self.model.forward_pass(batch)
            gradients = tape.gradient(output.loss, model_weights.trainable,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
            n = tf.cast(output.num_examples, tf.float32)
            sums = [s + n * g for s, g in zip(sums, gradients, strict=True)]
            num_examples += n
        return [s / num_examples for s in sums], num_examples
