"""Benchmark: one TFF FedAvg round against the same client work as plain Keras in the same process,
and the fixed cost of a chunk boundary. Ratios are measured in this run (the machine is shared and
noisy: compare only numbers printed together).

    make bench        # runs in the TFF environment

The workload matches the demo: the digits CNN, 10 clients per round with ~72 examples each, 2 local
epochs, batch 20, client SGD 0.1, server SGD 1.0.
"""

from __future__ import annotations

import collections
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLIENTS, EXAMPLES, EPOCHS, BATCH, ROUNDS, WARMUP = 10, 72, 2, 20, 10, 2



def median_seconds(fn, rounds: int = ROUNDS, warmup: int = WARMUP) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    start = time.perf_counter()
    import tensorflow as tf
    import tensorflow_federated as tff

    from tasks.checkpoints import CheckpointStore
    from trainer import models

    import_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    data = [
        (rng.uniform(0, 1, (EXAMPLES, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, EXAMPLES).astype(np.int64))
        for _ in range(CLIENTS)
    ]
    order = [np.concatenate([rng.permutation(EXAMPLES) for _ in range(EPOCHS)]) for _ in range(CLIENTS)]

    def client_datasets():
        return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x[o], y=y[o])).batch(BATCH)
                for (x, y), o in zip(data, order, strict=True)]

    def fedavg(loop):
        return tff.learning.algorithms.build_weighted_fed_avg(
            models.tff_model_fn("cnn", (8, 8, 1), 10),
            client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
            server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
            loop_implementation=loop,
        )

    build_start = time.perf_counter()
    process = fedavg(tff.learning.LoopImplementation.DATASET_ITERATOR)  # what fedflow uses
    build_s = time.perf_counter() - build_start
    reduce_process = fedavg(tff.learning.LoopImplementation.DATASET_REDUCE)  # TFF's default
    state = process.initialize()
    reduce_state = reduce_process.initialize()

    def tff_round():
        nonlocal state
        state = process.next(state, client_datasets()).state

    def tff_reduce_round():
        nonlocal reduce_state
        reduce_state = reduce_process.next(reduce_state, client_datasets()).state

    tff_s = median_seconds(tff_round)
    reduce_s = median_seconds(tff_reduce_round)

    # The same client work in plain Keras: per client, start from the global weights, run the batches,
    # then the example-weighted mean of the client models (FedAvg with server SGD 1.0).
    model = models.build_keras_model("cnn", (8, 8, 1), 10)
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.1)
    loss_fn = models.loss_fn()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables,
                                      strict=True))

    global_weights = model.get_weights()

    def keras_round():
        nonlocal global_weights
        total = [np.zeros_like(w) for w in global_weights]
        for ds in client_datasets():
            model.set_weights(global_weights)
            for batch in iter(ds):
                train_step(batch["x"], batch["y"])
            total = [t + EXAMPLES * w for t, w in zip(total, model.get_weights(), strict=True)]
        global_weights = [t / (EXAMPLES * CLIENTS) for t in total]

    keras_s = median_seconds(keras_round)

    leaves = tf.nest.flatten(state)
    with tempfile.TemporaryDirectory() as tmp:
        store = CheckpointStore(Path(tmp), keep=3)
        save_s = median_seconds(lambda: store.save(1, leaves), rounds=5, warmup=1)
        load_s = median_seconds(lambda: store.load(1), rounds=5, warmup=1)

    cold = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow_federated"], check=True, capture_output=True)
    cold_import_s = time.perf_counter() - cold

    print(f"\nOne FedAvg round, {CLIENTS} clients x {EXAMPLES} examples, {EPOCHS} epochs, batch {BATCH} (median of {ROUNDS}):")
    print(f"  TFF round, fedflow (iterator loop)  {tff_s * 1000:8.1f} ms")
    print(f"  TFF round, TFF default (reduce)     {reduce_s * 1000:8.1f} ms")
    print(f"  same client work in plain Keras     {keras_s * 1000:8.1f} ms")
    print(f"  ratio fedflow TFF / Keras           {tff_s / keras_s:8.2f}x   (target <= 1.3x)")
    print(f"  ratio TFF default / Keras           {reduce_s / keras_s:8.2f}x")
    print("\nFixed cost of a chunk boundary:")
    print(f"  process start + import TF + TFF    {cold_import_s:8.1f} s    (in this process: {import_s:.1f} s)")
    print(f"  building the learning process      {build_s:8.1f} s")
    print(f"  checkpoint save / load             {save_s * 1000:8.1f} / {load_s * 1000:.1f} ms")
    print(f"  => a chunk costs ~{cold_import_s + build_s:.0f} s before its first round: about "
          f"{(cold_import_s + build_s) / tff_s:.0f} rounds' worth")


if __name__ == "__main__":
    main()
