"""The tutorials' own algorithms (trainer/tutorial_algorithms.py) plugged in through ``learning_process``:
equal to TFF's built-ins per round, the clip bound holds, and a plugged-in run chunks and resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_federated as tff

from tasks import atomic, metrics_log
from tasks.config import ExperimentConfig
from tests.trainer.conftest import NUM_CLASSES, checkpoint
from trainer import learning_process_plugin, models, program, recipe_results, tutorial_algorithms

HAND_BUILT = "trainer.tutorial_algorithms:hand_built_fedavg"
CLIPPING = "trainer.tutorial_algorithms:fedavg_with_gradient_clipping"


def test_the_recipe_run_trains_the_clipping_process_and_measures_both_tutorials_claims(make_run):
    """The recipe build_your_own_algorithm in small: the composed clipping process trains the run (in two
    chunks); the measurement finds the hand-built FedAvg equal to build_unweighted_fed_avg, the unclipped
    composition equal to build_weighted_fed_avg (per round, 1e-5), and no clipped gradient above the clip."""
    run = make_run(
        "byo",
        recipe="build_your_own_algorithm",
        learning_process=CLIPPING,
        client_gradient_clip=0.5,
        model="softmax",
        client_learning_rate=0.05,
        server_learning_rate=0.8,
        rounds=3,
        rounds_per_chunk=2,
        eval_every=3,
    )
    assert program.train_until_round(run.root, 2) == 2
    assert program.train_until_round(run.root, 3) == 3  # the last chunk exports and measures
    results = atomic.read_json(run.root / recipe_results.RESULTS_FILE)
    assert results["hand_built_vs_unweighted_fed_avg_max_weight_difference"] <= 1e-5
    assert results["hand_built_vs_unweighted_fed_avg_max_loss_difference"] <= 1e-5
    assert results["unclipped_vs_weighted_fed_avg_max_weight_difference"] <= 1e-5
    assert results["unclipped_vs_weighted_fed_avg_max_loss_difference"] <= 1e-5
    assert results["max_gradient_norm_before_clip"] > 0.5  # clipping really happened ...
    assert results["max_gradient_norm_after_clip"] <= 0.5 * (1 + 1e-6)  # ... and bounds every step
    rows = metrics_log.read_rows(run.metrics)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all("train_loss" in r and "client_work/max_gradient_norm_after_clip" in r for r in rows)
    assert "test_accuracy" in rows[-1] and atomic.read_json(run.final)["round"] == 3


def test_a_plugged_in_run_resumed_between_chunks_ends_like_an_uninterrupted_one(make_run):
    chunked = make_run("chunked", learning_process=HAND_BUILT, rounds=4, rounds_per_chunk=2)
    program.train_until_round(chunked.root, 2)
    program.train_until_round(chunked.root, 4)
    whole = make_run("whole", learning_process=HAND_BUILT, rounds=4, rounds_per_chunk=4)
    program.train_until_round(whole.root, 4)
    for a, b in zip(checkpoint(chunked).leaves, checkpoint(whole).leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    rows = metrics_log.read_rows(chunked.metrics)
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert (chunked.model / "MLmodel").exists()  # exported like a built-in


def test_the_parity_measurement_sees_a_difference_when_the_algorithms_differ(make_run):
    """Against itself the hand-built FedAvg differs by 0; against FedAvg with another client learning rate the
    same measurement reports a difference: the recipe's 1e-5 checks are not blind."""
    from trainer import algorithm_parity, algorithms

    run = make_run("parity", learning_process=HAND_BUILT, rounds=1, rounds_per_chunk=1)
    exp = program.load_experiment(run.root)
    other = tff.learning.algorithms.build_unweighted_fed_avg(
        exp.model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.05),
        server_optimizer_fn=algorithms.server_optimizer(exp.cfg),
        loop_implementation=algorithms.LOOP,
    )
    assert algorithm_parity.per_round_difference(exp, exp.process, exp.process)["max_weight_difference"] == 0
    assert algorithm_parity.per_round_difference(exp, exp.process, other)["max_weight_difference"] > 1e-4


def _model_fn():
    return models.tff_model_fn("mlp", (8, 8, 1), NUM_CLASSES)


def test_the_clipping_client_work_is_stateless_as_the_tutorials_and_refuses_a_clip_of_zero():
    from trainer import algorithms

    cfg = ExperimentConfig(learning_process=CLIPPING)
    process = learning_process_plugin.load_learning_process(cfg, _model_fn())
    assert process.initialize().client_work == ()  # client_gradient_clip 0: built with the clip at infinity
    with pytest.raises(tutorial_algorithms.Error, match="clip_norm must be > 0"):
        tutorial_algorithms.build_gradient_clipping_client_work(
            _model_fn(), algorithms.client_optimizer(cfg), clip_norm=0.0
        )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.trainer.no_such_module:build", "cannot be imported in the TFF environment"),
        ("trainer.tutorial_algorithms:no_such_function", "cannot be imported in the TFF environment"),
        ("trainer.tutorial_algorithms:ModelWeights", "must return a tff.learning.templates.LearningProcess"),
        ("trainer.tutorial_algorithms:math", "must name a function of"),
        ("tests.trainer.test_tutorial_algorithms:process_of_another_model", "get_model_weights must return the run's"),
    ],
)
def test_a_broken_learning_process_is_reported_with_the_fix(target, message):
    cfg = ExperimentConfig(learning_process=target)
    with pytest.raises(learning_process_plugin.LearningProcessPluginError, match=message):
        learning_process_plugin.load_learning_process(cfg, _model_fn())


def process_of_another_model(cfg, model_fn):  # noqa: ARG001 - a user's mistake: ignores the run's model
    return tff.learning.algorithms.build_weighted_fed_avg(
        models.tff_model_fn("softmax", (8, 8, 1), NUM_CLASSES + 1),
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1),
    )


def test_the_hand_built_fedavg_refuses_an_aggregator_it_cannot_apply_and_the_hybrid_refuses_plug_ins(make_run):
    with pytest.raises(tutorial_algorithms.Error, match="aggregator='mean'"):
        tutorial_algorithms.hand_built_fedavg(ExperimentConfig(aggregator="robust"), _model_fn())
    with pytest.raises(tutorial_algorithms.Error, match="hand_built_fedavg does not clip gradients"):
        tutorial_algorithms.hand_built_fedavg(
            ExperimentConfig(learning_process=HAND_BUILT, client_gradient_clip=1.0), _model_fn()
        )
    run = make_run("hybrid", learning_process=HAND_BUILT, rounds=1, rounds_per_chunk=1)
    with pytest.raises(program.Error, match="runs on the 'tff' engine only"):
        program.train_until_round(run.root, 1, engine="hybrid")
