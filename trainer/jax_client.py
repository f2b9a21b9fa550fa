"""A client's local SGD in JAX: one client per compiled call, or a whole cohort per compiled call.

The model is a dense network given as a list of ``(W, b)`` layers with ReLU between them (logistic
regression is one layer; the digits MLP 64-128-10 is two). The loss is softmax cross-entropy on
integer labels, averaged over the batch — Keras' ``SparseCategoricalCrossentropy(from_logits=True)``.
The semantics are those of TFF's FedAvg client step
(``model_delta_client_work.build_model_delta_update_with_tff_optimizer`` with ``build_sgdm`` and no
momentum): SGD over the client's examples in the given order, in the batches
``tf.data.Dataset.from_tensor_slices(...).batch(batch_size)`` makes (the last one smaller), and
metrics over the training pass from the predictions *before* each step. Several local epochs are the
caller's concatenated (permuted) copies of the data, as ``dataset.shuffle(...).repeat(epochs)`` gives.

Only numpy and jax are imported (no TensorFlow), with jax APIs that have been stable for years, so
this module also runs on a GPU machine that has jax but no TensorFlow.

Both entry points pad to whole batches and mask the padding: a masked example adds nothing to the
loss or the gradient, so a fully masked batch leaves the weights exactly unchanged (plain SGD, no
momentum). This is what lets ``cohort_update`` run clients of different sizes in one call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Layer = tuple[jax.Array, jax.Array]
Params = list[Layer]


class ClientOutput(NamedTuple):
    """One client's result, or K clients' stacked on a leading axis (``cohort_update``).

    ``delta`` is initial minus final weights (TFF's client update), in the structure of ``params``;
    ``num_examples`` counts the examples trained on (every epoch); ``loss_sum`` is the batch mean loss
    times the batch size summed over batches (Keras' ``Mean`` loss metric's total, whose count is
    ``num_examples``); ``correct`` counts correct predictions (``SparseCategoricalAccuracy``'s total).
    """

    delta: Params
    num_examples: jax.Array
    loss_sum: jax.Array
    correct: jax.Array


def init_dense(sizes: Sequence[int], seed: int = 0) -> Params:
    """Glorot-uniform weights and zero biases for a dense network, e.g. ``[64, 128, 10]``."""
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        params.append((jnp.asarray(w), jnp.zeros((fan_out,), jnp.float32)))
    return params


def as_params(layers: Sequence[Sequence[np.ndarray]]) -> Params:
    """``[(W, b), ...]`` as float32 jax arrays (e.g. from a Keras model's ``get_weights()`` pairs)."""
    return [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in layers]


def logits(params: Params, x: jax.Array) -> jax.Array:
    """The network's output for a batch ``x`` of shape ``[B, features]``."""
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def _sgd_step(params: Params, batch, learning_rate):
    """One SGD step on a batch whose padding rows have mask 0; returns new params and batch metrics."""
    x, y, mask = batch
    x = jnp.where(mask[:, None] > 0, x, 0.0)  # garbage in padding can't make NaN through 0 * inf
    count = jnp.sum(mask)

    def mean_loss(p):
        out = logits(p, x)
        per_example = -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1)[:, 0]
        return jnp.sum(per_example * mask) / jnp.maximum(count, 1.0), out

    (loss, out), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    new_params = jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grads)
    correct = jnp.sum((jnp.argmax(out, axis=1) == y) * mask)
    return new_params, (loss * count, correct, count)


def _train_batched(params: Params, xb, yb, mb, learning_rate) -> ClientOutput:
    """Local SGD over pre-batched data ``xb [S, B, F]``, ``yb [S, B]``, mask ``mb [S, B]`` (0/1 float)."""
    step = functools.partial(_sgd_step, learning_rate=learning_rate)
    final, (loss_sums, corrects, counts) = jax.lax.scan(step, params, (xb, yb, mb))
    delta = jax.tree_util.tree_map(jnp.subtract, params, final)
    return ClientOutput(
        delta, jnp.sum(counts).astype(jnp.int32), jnp.sum(loss_sums), jnp.sum(corrects).astype(jnp.int32)
    )


def _batched(x, y, mask, batch_size: int):
    """Reshapes ``[..., N, F]`` data padded to a multiple of ``batch_size`` into ``[..., S, B, F]``."""
    lead = x.shape[:-2]
    steps = x.shape[-2] // batch_size
    return (
        x.reshape(*lead, steps, batch_size, x.shape[-1]),
        y.reshape(*lead, steps, batch_size),
        mask.reshape(*lead, steps, batch_size),
    )


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _client_jit(params, x, y, num_examples, learning_rate, *, batch_size):
    mask = (jnp.arange(x.shape[0]) < num_examples).astype(jnp.float32)
    return _train_batched(params, *_batched(x, y, mask, batch_size), learning_rate)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _cohort_jit(params, xs, ys, counts, learning_rate, *, batch_size):
    pad = -xs.shape[1] % batch_size
    xs = jnp.pad(xs, ((0, 0), (0, pad), (0, 0)))
    ys = jnp.pad(ys, ((0, 0), (0, pad)))
    masks = (jnp.arange(xs.shape[1])[None, :] < counts[:, None]).astype(jnp.float32)
    train = jax.vmap(_train_batched, in_axes=(None, 0, 0, 0, None))
    return train(params, *_batched(xs, ys, masks, batch_size), learning_rate)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Got {batch_size!r}.")


def client_update(params: Params, x, y, *, batch_size: int, learning_rate: float) -> ClientOutput:
    """Trains one client from ``params`` on ``x [N, F]``, ``y [N]`` (in this order); jitted.

    The data is padded on the host to a whole number of batches, so one compilation serves every
    client with the same number of steps. Returns without waiting for the device (jax dispatch is
    asynchronous); block on the result before timing it.
    """
    _check_batch_size(batch_size)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n = x.shape[0]
    pad = -n % batch_size
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
        y = np.concatenate([y, np.zeros((pad,), np.int32)])
    return _client_jit(params, x, y, np.int32(n), np.float32(learning_rate), batch_size=batch_size)


def stack_clients(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], *, multiple: int = 1):
    """Pads K clients' data to a common length (rounded up to ``multiple``): ``[K, N, F]``, ``[K, N]``, counts ``[K]``."""
    counts = np.array([len(x) for x in xs], np.int32)
    length = max(int(counts.max()), 1)
    length += -length % multiple
    x_out = np.zeros((len(xs), length, xs[0].shape[-1]), np.float32)
    y_out = np.zeros((len(xs), length), np.int32)
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        x_out[i, : len(x)] = x
        y_out[i, : len(y)] = y
    return x_out, y_out, counts


def cohort_update(params: Params, xs, ys, counts, *, batch_size: int, learning_rate: float) -> ClientOutput:
    """Trains K clients from the same ``params`` in one compiled call: vmap over clients, scan over steps.

    ``xs [K, N, F]`` and ``ys [K, N]`` hold client k's examples in rows ``[:counts[k]]`` (see
    ``stack_clients``); every client runs ``ceil(N / batch_size)`` steps, and the steps after its data
    ran out are fully masked and leave its weights unchanged. Equals ``client_update`` per client up to
    float rounding (the batched matmuls may sum in another order). Returns ``ClientOutput`` with a
    leading K axis on every field.
    """
    _check_batch_size(batch_size)
    xs = jnp.asarray(xs, jnp.float32)
    ys = jnp.asarray(ys, jnp.int32)
    counts = jnp.asarray(counts, jnp.int32)
    if xs.ndim != 3 or ys.shape != xs.shape[:2] or counts.shape != xs.shape[:1]:
        raise ValueError(f"expected xs [K, N, F], ys [K, N], counts [K]. Got {xs.shape}, {ys.shape}, {counts.shape}.")
    return _cohort_jit(params, xs, ys, counts, jnp.float32(learning_rate), batch_size=batch_size)
