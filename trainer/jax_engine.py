"""The ``jax`` engine: each round's local training in JAX (jit-compiled, in the trainer process), aggregated
by TFF.

TFF 0.87 traces JAX computations (``tff.jax.computation``) but its pip package cannot run them: the only
runtime is ``worker_binary``'s TensorFlow executor, which refuses an XLA computation with INVALID_ARGUMENT
("... Found computation of type 12"; trainer/jax_tutorial.py records it in every run of the jax_support
recipe). This engine is the working path: the JAX model's local SGD runs in Python, and the rest of the round
is TFF's, exactly as for the ``hybrid`` engine (trainer/hybrid.py), whose structure it reuses:

1. **Client work**: the whole cohort in one compiled call, ``trainer/jax_client.py``'s ``cohort_update``
   (vmap over clients, scan over local steps; each client's examples in its training order, batches as
   ``Dataset.batch`` makes them, the padding masked). The model is the run's Keras model read as dense layers
   (``softmax``: logistic regression, one layer; ``mlp``: 64-128-10 with ReLU), with the run's weights.
   Semantics of TFF's FedAvg client step with plain client SGD (``model_delta_client_work``): update =
   initial - final weights, weight = examples (or 1, unweighted), a client update with a non-finite value is
   zeroed with weight 0 and its metrics dropped; metrics as the Keras metrics of ``from_keras_model`` sum them.
2. **Aggregation** by the TFF aggregation process the ``tff`` engine's learning process composes for the
   config (mean, robust, DP, compression, secure, custom), called with every client's update: TFF's plain mean
   included (the hybrid computes that one in its graph; here TFF aggregates every round).
3. **Server step** by the same ``tff.learning.optimizers`` server optimizer (SGD, Adam, Yogi, Adagrad).

The state is TFF's ``LearningAlgorithmState``: checkpoints, resume and the metrics stream are the other
engines', and one round equals one round of the ``tff`` engine to float32 round-off
(tests/trainer/test_jax_engine.py). The algorithms it runs are FedAvg's (local SGD): fedavg,
fedavg_unweighted, fedadam, fedyogi, fedadagrad (tasks/config_jax.py refuses the others with the fix).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks.config import ExperimentConfig
from tasks.config_jax import JAX_ALGORITHMS, JAX_MODELS
from trainer import hybrid, jax_client, stacked


class Error(Exception):
    """Base class for jax-engine errors."""


@dataclasses.dataclass(frozen=True)
class JaxCohort(hybrid.Cohort):
    """A cohort with each client's examples flattened and padded to the cohort's longest client
    (``jax_client.stack_clients``): (x [K, N, features], y [K, N], counts [K])."""

    stacked: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def device_name() -> str:
    """The device the jax engine's client work runs on, e.g. 'cpu:0' or 'cuda:0'."""
    device = jax.devices()[0]
    return f"{device.platform}:{device.id}"


class JaxEngine(hybrid.HybridEngine):
    """Runs rounds of ``cfg.algorithm`` with the client work in JAX (see module docstring).

    Build it after every TFF process of the run (it calls ``model_fn`` once, as the hybrid does).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model_fn: Callable[[], tff.learning.models.VariableModel],
        process: tff.learning.templates.LearningProcess,
    ) -> None:
        if cfg.algorithm not in JAX_ALGORITHMS or cfg.model not in JAX_MODELS:
            raise Error(
                f"The jax engine trains models {list(JAX_MODELS)} with algorithms {list(JAX_ALGORITHMS)}. "
                f"Got model={cfg.model!r}, algorithm={cfg.algorithm!r}. Fix: engine='hybrid' or 'tff'."
            )
        super().__init__(cfg, model_fn, process, lock_step=False)
        self.in_graph_mean = False  # TFF aggregates every round, its plain mean included
        keras_model = getattr(self.model, "_keras_model", None)
        layers = stacked.dense_layers(keras_model) if keras_model is not None else None
        relu_then_linear = layers is not None and all(
            layer.activation is (tf.keras.activations.linear if i == len(layers) - 1 else tf.keras.activations.relu)
            for i, layer in enumerate(layers)
        )
        if not relu_then_linear or sorted(m.name for m in self.model.get_metrics()) != sorted(stacked.METRICS):
            raise Error(
                f"The jax engine trains Flatten/Dense models with ReLU hidden layers and linear logits, "
                f"with the Keras metrics {list(stacked.METRICS)}. Got model {cfg.model!r}. Fix: engine='hybrid'."
            )
        keys = list(self._client_work_structure) if isinstance(self._client_work_structure, dict) else []
        if keys not in ([], ["learning_rate"]):
            raise Error(
                f"The jax engine's client step is plain SGD (hyper-parameter learning_rate only). Got "
                f"client hyper-parameters {keys}. Fix: engine='hybrid'."
            )
        self._rate_in_state = bool(keys)
        self.jax_device = device_name()

    def prepare(self, examples: Sequence[tuple[np.ndarray, np.ndarray]], x_shape: tuple[int, ...]) -> JaxCohort:
        """A round's cohort, stacked for one compiled call (run it in a background thread)."""
        cohort = hybrid.Cohort.of(examples, x_shape)
        padded = None
        if examples:
            batch_size = self.cfg.batch_size
            xs, ys, counts = jax_client.stack_clients(
                [x.reshape(len(x), -1) for x, _ in examples], [y for _, y in examples], multiple=batch_size
            )
            # Local steps padded to a power of two: one compilation serves every round whose longest client
            # needs as many steps or fewer (each new shape costs ~1.5 s of XLA compilation here). The extra
            # steps are fully masked, so they leave every client's weights exactly unchanged (plain SGD).
            steps = xs.shape[1] // batch_size
            extra = ((1 << (steps - 1).bit_length()) - steps) * batch_size
            padded = (np.pad(xs, ((0, 0), (0, extra), (0, 0))), np.pad(ys, ((0, 0), (0, extra))), counts)
        return JaxCohort(cohort.x, cohort.y, cohort.starts, cohort.lengths, stacked=padded)

    def client_work(self, state, cohort: hybrid.Cohort) -> hybrid.ClientWork:
        """The cohort's local SGD in one jit-compiled call; each client's update for TFF's aggregation."""
        if not isinstance(cohort, JaxCohort):
            cohort = self.prepare(list(zip(*hybrid._client_slices(cohort), strict=True)), cohort.x.shape[1:])
        trainable = [np.asarray(w, np.float32) for w in state.global_model_weights.trainable]
        if cohort.stacked is None:  # nobody sampled (a DP round still aggregates)
            empty = np.zeros(0, np.float32)
            return hybrid.ClientWork(
                self._unfinalized(empty, empty, empty, empty),
                updates=[np.zeros((0, *w.shape), np.float32) for w in trainable],
                client_weights=empty,
            )
        rate = float(state.client_work["learning_rate"]) if self._rate_in_state else self.cfg.client_learning_rate
        params = jax_client.as_params(list(zip(trainable[::2], trainable[1::2], strict=True)))
        out = jax_client.cohort_update(params, *cohort.stacked, batch_size=self.cfg.batch_size, learning_rate=rate)
        updates = [np.asarray(d) for d in jax.tree_util.tree_leaves(out.delta)]
        num_clients = len(cohort)
        # TFF zeroes a non-finite update and gives it weight 0 and no metrics.
        finite = np.all([np.isfinite(u.reshape(num_clients, -1)).all(axis=1) for u in updates], axis=0)
        updates = [np.where(finite.reshape(-1, *[1] * (u.ndim - 1)), u, 0.0).astype(np.float32) for u in updates]
        examples = np.asarray(out.num_examples, np.float32)
        client_weights = np.where(finite, examples if self.weighted else 1.0, 0.0).astype(np.float32)
        batches = np.ceil(examples / self.cfg.batch_size)
        kept = [
            np.where(finite, np.asarray(v, np.float32), 0.0)
            for v in (examples, np.asarray(out.loss_sum), np.asarray(out.correct), batches)
        ]
        return hybrid.ClientWork(self._unfinalized(*kept), updates=updates, client_weights=client_weights)

    @staticmethod
    def _unfinalized(examples, loss_sums, correct, batches) -> collections.OrderedDict:
        """The clients' summed metrics in the structure ``report_local_unfinalized_metrics`` has."""
        count = np.float32(examples.sum())
        return collections.OrderedDict(
            sparse_categorical_accuracy=[np.float32(correct.sum()), count],
            loss=[np.float32(loss_sums.sum()), count],
            num_examples=[np.int64(examples.sum())],
            num_batches=[np.int64(batches.sum())],
        )
