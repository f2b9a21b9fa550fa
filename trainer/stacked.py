"""Client work of a whole cohort in lock-step, for dense-only models: K clients per step.

The hybrid engine's default loops over a round's clients inside one graph, one client after another.
For a model made only of Flatten and Dense layers (the ``mlp``), every client's weights can instead be
stacked on a leading axis and all K clients take their local step s at once: each dense layer is one
batched ``einsum`` over ``[K, batch, in] x [K, in, out]``, so a GPU (or the CPU's vector units) works on
the whole cohort per step. Clients have different numbers of batches: each client's examples are laid
out as ``[steps, batch]`` with a mask; a client whose data has run out (or whose last batch is short)
contributes masked rows, and its weights do not move once it has no batch left.

The arithmetic is the per-client step's (``model_delta_client_work`` in TFF 0.87): the batch loss is the
mean cross-entropy over the client's real rows (Keras ``SparseCategoricalCrossentropy``, sum over batch
size), plain SGD ``w - lr * g`` (``tff.learning.optimizers.build_sgdm`` without momentum), FedProx's term
as TFF adds it, metrics as the Keras metrics of ``from_keras_model`` accumulate them. Only the order of
float32 sums differs (einsum vs matmul), so it equals the per-client loop to float32 round-off;
tests/trainer/test_hybrid.py holds it to the TFF learning process per round.

Measured in ``make bench-engines``; FACTS.md has the prototype's numbers for the approach (5-14x for
an MLP on 2 cores, none for convolutions, which stay on the per-client loop).
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

# The Keras metrics ``trainer.models.tff_model_fn`` gives the model, in the order TFF reports them.
METRICS = ("sparse_categorical_accuracy", "loss", "num_examples", "num_batches")


def dense_layers(keras_model: tf.keras.Model) -> list[tf.keras.layers.Dense] | None:
    """The model's Dense layers when it is Flatten/Dense only, with relu or linear activations and no
    regularisers or constraints; None otherwise (the per-client loop handles any model)."""
    layers = []
    for layer in keras_model.layers:
        if isinstance(layer, (tf.keras.layers.InputLayer, tf.keras.layers.Flatten)):
            continue
        if not isinstance(layer, tf.keras.layers.Dense) or not layer.use_bias:
            return None
        if layer.activation not in (tf.keras.activations.relu, tf.keras.activations.linear):
            return None
        if layer.kernel_regularizer or layer.bias_regularizer or layer.activity_regularizer:
            return None
        layers.append(layer)
    return layers or None


def pad_cohort(x: np.ndarray, y: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
               batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each client's examples as ``[steps, batch]`` (the batches ``Dataset.batch`` would make), padded to
    the cohort's longest client: (x [K, S, B, features], y [K, S, B], mask [K, S, B] float32)."""
    k = len(lengths)
    steps = int(max((int(n) + batch_size - 1) // batch_size for n in lengths)) if k else 0
    features = int(np.prod(x.shape[1:]))
    xs = np.zeros((k, steps * batch_size, features), np.float32)
    ys = np.zeros((k, steps * batch_size), np.int64)
    mask = np.zeros((k, steps * batch_size), np.float32)
    for i, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        xs[i, :n] = x[start : start + n].reshape(n, features)
        ys[i, :n] = y[start : start + n]
        mask[i, :n] = 1.0
    return (xs.reshape(k, steps, batch_size, features), ys.reshape(k, steps, batch_size),
            mask.reshape(k, steps, batch_size))


class StackedDenseClients:
    """Trains K clients of a dense-only model in lock-step (see module docstring)."""

    def __init__(self, layers: list[tf.keras.layers.Dense], *, proximal_strength: float, weighted: bool) -> None:
        self.activations = [layer.activation for layer in layers]
        self.proximal_strength = proximal_strength
        self.weighted = weighted

    def _forward(self, weights, x):
        """Logits [K, B, classes] for x [K, B, features] under per-client weights [K, ...]."""
        h = x
        for i, activation in enumerate(self.activations):
            kernel, bias = weights[2 * i], weights[2 * i + 1]
            h = activation(tf.einsum("kbi,kio->kbo", h, kernel) + bias[:, None, :])
        return h

    def train(self, trainable, learning_rate, x, y, mask, reduce_mean: bool):
        """(stacked updates [K, ...], client weights [K], summed unfinalized metrics), or with
        ``reduce_mean`` (TFF's plain mean of the updates, summed unfinalized metrics)."""
        num_clients, steps = tf.shape(x)[0], tf.shape(x)[1]
        initial = [tf.repeat(w[None], num_clients, axis=0) for w in trainable]
        weights = list(initial)
        zeros = tf.zeros([num_clients])
        loss_total, loss_count, correct, examples, batches = zeros, zeros, zeros, zeros, zeros
        for s in tf.range(steps):
            batch_mask = mask[:, s]  # [K, B]
            counts = tf.reduce_sum(batch_mask, axis=1)  # rows each client has in this step
            active = tf.cast(counts > 0, tf.float32)
            with tf.GradientTape() as tape:
                tape.watch(weights)
                logits = self._forward(weights, x[:, s])
                cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[:, s], logits=logits)
                client_loss = tf.reduce_sum(cross_entropy * batch_mask, axis=1) / tf.maximum(counts, 1.0)
                total = tf.reduce_sum(client_loss)  # clients are independent: d total / d w_k = d loss_k / d w_k
            gradients = tape.gradient(total, weights)
            if self.proximal_strength > 0.0:  # TFF 0.87's term, kept for parity: mu * (initial - current)
                gradients = [g + self.proximal_strength * (w0 - w) for g, w, w0 in zip(gradients, weights, initial,
                                                                                      strict=True)]
            weights = [w - learning_rate * g * _expand(active, w) for w, g in zip(weights, gradients, strict=True)]
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int64)
            loss_total += client_loss * counts
            loss_count += counts
            correct += tf.reduce_sum(tf.cast(tf.equal(predicted, y[:, s]), tf.float32) * batch_mask, axis=1)
            examples += counts
            batches += active
        updates = [w0 - w for w0, w in zip(initial, weights, strict=True)]
        finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(tf.reshape(u, [num_clients, -1])), axis=1)
                                         for u in updates]), axis=0)
        # TFF zeroes a non-finite update and gives it weight 0 and no metrics (where, not x 0: NaN x 0 = NaN).
        updates = [tf.where(_expand(finite, u) > 0, u, tf.zeros_like(u)) for u in updates]

        def kept(per_client):
            return tf.reduce_sum(tf.where(finite, per_client, tf.zeros_like(per_client)))

        client_weights = tf.where(finite, examples if self.weighted else tf.ones_like(examples), zeros)
        metrics = collections.OrderedDict(
            sparse_categorical_accuracy=[kept(correct), kept(loss_count)],
            loss=[kept(loss_total), kept(loss_count)],
            num_examples=[tf.cast(kept(examples), tf.int64)],
            num_batches=[tf.cast(kept(batches), tf.int64)],
        )
        if not reduce_mean:
            return updates, client_weights, metrics
        denominators = client_weights if self.weighted else tf.ones_like(client_weights)
        means = [tf.math.divide(tf.reduce_sum(u * _expand(denominators, u), axis=0), tf.reduce_sum(denominators))
                 for u in updates]
        return means, metrics


def _expand(per_client: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """A [K] vector shaped to broadcast against [K, ...] ``like``."""
    return tf.reshape(tf.cast(per_client, like.dtype), tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], 0))
