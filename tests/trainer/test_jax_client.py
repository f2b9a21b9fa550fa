"""The JAX client step against TFF's own FedAvg client step (a plain tf.function, run eagerly here: no
federated computation, no worker_binary), and the one-call cohort against the per-client loop."""

from __future__ import annotations

import collections

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", False)

from trainer import jax_client  # noqa: E402 - after the importorskip

FEATURES, CLASSES, BATCH, LR = 64, 10, 8, 0.1


def two_epochs(rng: np.random.Generator, n: int):
    """n digits-like examples, then two epochs as concatenated permutations (what shuffle+repeat gives)."""
    x = rng.uniform(0, 1, (n, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n).astype(np.int64)
    order = np.concatenate([rng.permutation(n), rng.permutation(n)])
    return x[order], y[order]


def tff_client_step(hidden: tuple[int, ...], x: np.ndarray, y: np.ndarray, seed: int):
    """Runs TFF's client update once on a fresh Keras model; returns its initial weights and outputs."""
    import tensorflow as tf
    import tensorflow_federated as tff
    from tensorflow_federated.python.learning.templates import model_delta_client_work

    input_spec = collections.OrderedDict(
        x=tf.TensorSpec([None, FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int64)
    )

    def model_fn():
        tf.keras.utils.set_random_seed(seed)
        layers = [tf.keras.layers.Dense(h, activation="relu") for h in hidden]
        keras_model = tf.keras.Sequential([tf.keras.layers.Input((FEATURES,)), *layers, tf.keras.layers.Dense(CLASSES)])
        for layer in keras_model.layers:  # non-zero biases, so their updates are checked too
            layer.bias.assign(tf.random.uniform(layer.bias.shape, -0.1, 0.1, seed=seed))
        return tff.learning.models.from_keras_model(
            keras_model,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=input_spec,
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        )

    client_update = model_delta_client_work.build_model_delta_update_with_tff_optimizer(
        model_fn,
        weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
        loop_implementation=tff.learning.LoopImplementation.DATASET_ITERATOR,
    )
    initial = tff.learning.models.ModelWeights.from_model(model_fn())
    initial = tf.nest.map_structure(lambda v: tf.constant(v.numpy()), initial)
    dataset = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(BATCH)
    result, metrics = client_update(tff.learning.optimizers.build_sgdm(learning_rate=LR), initial, dataset)
    layers = [t.numpy() for t in initial.trainable]
    return list(zip(layers[::2], layers[1::2], strict=True)), result, metrics


@pytest.mark.parametrize("hidden", [(), (128,)], ids=["logreg", "mlp"])
def test_jax_client_update_equals_tffs_client_step(hidden):
    x, y = two_epochs(np.random.default_rng(3), 37)  # 74 examples in batches of 8: the last one has 2
    initial, tff_result, tff_metrics = tff_client_step(hidden, x, y, seed=11)

    out = jax_client.client_update(jax_client.as_params(initial), x, y, batch_size=BATCH, learning_rate=LR)

    tff_delta = [t.numpy() for t in tff_result.update]
    metrics = {name: [float(np.asarray(v)) for v in values] for name, values in tff_metrics.items()}
    jax_delta = jax.tree_util.tree_leaves(out.delta)
    assert [d.shape for d in jax_delta] == [d.shape for d in tff_delta]
    max_diff = max(np.abs(np.asarray(j) - t).max() for j, t in zip(jax_delta, tff_delta, strict=True))
    print(f"max |delta_jax - delta_tff| = {max_diff:.2e}; loss sum {float(out.loss_sum)} vs {metrics['loss'][0]}")
    assert max_diff <= 1e-6
    assert min(np.abs(t).max() for t in tff_delta) > 1e-3  # every layer really moved
    assert int(out.num_examples) == 74 == int(tff_result.update_weight)
    assert metrics["num_examples"] == [74] and metrics["num_batches"] == [10]
    loss_total, loss_count = metrics["loss"]
    assert float(out.loss_sum) == pytest.approx(loss_total, rel=1e-6) and loss_count == 74
    correct, accuracy_count = metrics["sparse_categorical_accuracy"]
    assert int(out.correct) == correct and accuracy_count == 74


def test_cohort_update_equals_one_client_update_per_client():
    rng = np.random.default_rng(5)
    params = jax_client.init_dense([FEATURES, 32, CLASSES], seed=1)
    clients = [two_epochs(rng, n) for n in (37, 3, 20, 8, 1)]  # 3 and 1: fewer examples than a batch
    xs, ys, counts = jax_client.stack_clients([x for x, _ in clients], [y for _, y in clients])

    cohort = jax_client.cohort_update(params, xs, ys, counts, batch_size=BATCH, learning_rate=LR)

    assert xs.shape[1] == 74 and jax.tree_util.tree_leaves(cohort.delta)[0].shape == (5, FEATURES, 32)
    for k, (x, y) in enumerate(clients):
        one = jax_client.client_update(params, x, y, batch_size=BATCH, learning_rate=LR)
        for single, stacked in zip(
            jax.tree_util.tree_leaves(one.delta), jax.tree_util.tree_leaves(cohort.delta), strict=True
        ):
            np.testing.assert_allclose(np.asarray(stacked)[k], np.asarray(single), rtol=0, atol=1e-6)
        assert int(cohort.num_examples[k]) == int(one.num_examples) == len(x)
        assert float(cohort.loss_sum[k]) == pytest.approx(float(one.loss_sum), rel=1e-6)
        assert int(cohort.correct[k]) == int(one.correct)


def test_a_client_without_examples_returns_a_zero_delta():
    params = jax_client.init_dense([FEATURES, CLASSES])
    xs, ys, counts = jax_client.stack_clients(
        [np.ones((9, FEATURES), np.float32), np.zeros((0, FEATURES), np.float32)],
        [np.zeros(9, np.int64), np.zeros(0, np.int64)],
    )

    cohort = jax_client.cohort_update(params, xs, ys, counts, batch_size=BATCH, learning_rate=LR)

    assert all(not np.asarray(d)[1].any() for d in jax.tree_util.tree_leaves(cohort.delta))
    assert int(cohort.num_examples[1]) == 0 and float(cohort.loss_sum[1]) == 0.0
