"""Recipe measurements the trainer makes for the reference check (trainer/recipe_results.py)."""

from __future__ import annotations

import numpy as np

from tasks import atomic, metrics_log
from trainer import program, recipe_results


def test_image_classification_keras_and_the_tutorials_variable_model_train_alike(make_run):
    """The tutorial's claim: a hand-written VariableModel gives the same per-round metrics as the Keras
    model; both zero-initialised softmax regressions, the same fixed clients and batches."""
    run = make_run("image_classification", recipe="image_classification", model="softmax", client_sampling="fixed",
                   clients_per_round=4, heldout_clients=2, client_learning_rate=0.02, local_epochs=2, batch_size=5,
                   rounds=4, rounds_per_chunk=4, eval_every=2)
    program.train_until_round(run.root, 4)  # the last chunk exports, which measures the recipe
    results = atomic.read_json(run.root / recipe_results.RESULTS_FILE)
    assert results["variable_model_max_loss_difference"] <= 1e-4
    assert results["variable_model_max_accuracy_difference"] <= 1e-4
    rows = metrics_log.read_rows(run.metrics)
    assert all(b["train_loss"] < a["train_loss"] for a, b in zip(rows, rows[1:], strict=False))
    assert results["heldout_examples"] == 2 * 24
    assert 0 < results["heldout_majority_class_accuracy"] <= 1
    start = program.load_experiment(run.root).checkpoints.load(0).leaves
    assert not np.any(start[0]) and not np.any(start[1])  # zero-initialised, as the tutorial's model


def test_custom_aggregators_the_tutorials_factory_trains_fedavg_exactly_like_the_plain_mean(make_run):
    run = make_run("custom_aggregators", recipe="custom_aggregators", aggregator="custom",
                   custom_aggregator="trainer.tutorial_aggregators:scaled_mean", rounds=3, rounds_per_chunk=3)
    program.train_until_round(run.root, 3)
    results = atomic.read_json(run.root / recipe_results.RESULTS_FILE)
    assert results["tutorial_example_result"] == 8.0 and results["tutorial_example_scaled_sum"] == 800.0
    assert results["tutorial_example_rounds_in_state"] == 1
    assert results["max_weight_difference_vs_plain_mean"] <= 1e-5
