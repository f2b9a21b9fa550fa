"""Random noise generation: the tutorial's values under TF 2.14 / TFF 0.87, its set_seed pitfall, clients that
agree on a seeded value, and the project's DP noise as a function of (seed, round) only.

tests/trainer/test_seeded_dp.py already pins that a chunked DP run ends in the state of a one-go run and that
the query's noise has its stddev and changes every round; these tests add the noise of each round as the
learning process adds it, across runs, seeds and re-traced builds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context

from tests.trainer.conftest import checkpoint
from trainer import hybrid, program, random_noise

DP = {
    "aggregator": "dp",
    "algorithm": "fedavg_unweighted",
    "noise_multiplier": 0.5,
    "dp_clipping": "fixed",
    "dp_clip": 1.0,
    "dp_epsilon_budget": 0,
    "rounds": 3,
    "rounds_per_chunk": 3,
}


def test_the_tutorials_printed_values_hold_on_tf_2_14():
    values = random_noise.tutorial_values()
    assert values["stateless_normal_seed_1_1"] == 1.6652163  # the tutorial prints 1.665
    assert values["stateless_normal_seed_2_2"] == -0.21901172  # -0.219
    assert (values["stateless_normal_seed_1_1_3dp"], values["stateless_normal_seed_2_2_3dp"]) == (1.665, -0.219)
    assert values["stateless_clients_agree"] == values["stateless_eager_equals_clients"] == 1.0
    assert (values["generator_from_seed_1"], values["generator_from_seed_2"]) == (0.3052047, -0.38260335)
    # Eager with a Python int, TF 2.14 seeds another Philox state ([1, 0, 0], not [0, 0, 1]): not the tutorial's.
    assert values["generator_from_python_int_seed_1_eager"] == 0.43842274
    assert values["nondeterministic_clients_distinct"] == 1.0
    # The tutorial's "model initializer on clients" differs across clients and calls; on Keras 2.14 it does not.
    assert values["keras_initializer_clients_distinct"] == values["keras_initializer_calls_distinct"] == 0.0


def test_the_set_seed_pitfall_is_reproduced_and_the_global_seed_restored():
    tf.random.set_seed(123)
    try:
        values = random_noise.set_seed_pitfall()
        assert context.global_seed() == 123
    finally:
        tf.random.set_seed(None)
    assert values == {
        "set_seed_retraced_value": 0.3052047,
        "set_seed_retrace_repeats_value": 1.0,
        "set_seed_same_trace_draws_anew": 1.0,
        "set_seed_ignored_by_tff_computation": 1.0,
    }


def test_every_client_agrees_on_a_value_seeded_from_seed_and_round():
    values = random_noise.seeded_clients_agree(seed=3, rounds=3, num_clients=5)
    assert values == {
        "seeded_clients_agree_every_round": 1.0,
        "seeded_rounds_distinct": 1.0,
        "per_client_seeds_distinct": 1.0,
        "per_client_seeds_reproducible": 1.0,
        "seeded_clients_checked": 5,
    }


def _noise_per_round(exp, run, rounds: int, *, set_seed: int | None = None) -> list[np.ndarray]:
    """The noise rounds 1..``rounds`` of ``run`` added: from the checkpoint before each round, on an aggregation
    process built (traced) afresh for ``exp``'s config, under ``tf.random.set_seed(set_seed)`` when given."""
    update_type = exp.process.initialize.type_signature.result.member.global_model_weights.trainable
    with random_noise.global_seed(set_seed):
        aggregation = hybrid.aggregation_process(exp.cfg, update_type)
    template = exp.process.initialize()
    states = [tf.nest.pack_sequence_as(template, checkpoint(run, r).leaves) for r in range(rounds)]
    return [random_noise.round_noise(aggregation, s.aggregator, update_type) for s in states]


def _noise_of_seed(exp, seed: int, rounds: int) -> list[np.ndarray]:
    """The noise of rounds 1..``rounds`` with another experiment seed: with a fixed clip the aggregator's state
    (its noise seed) advances the same whatever the clients send, so all-zero updates stand in for a run."""
    update_type = exp.process.initialize.type_signature.result.member.global_model_weights.trainable
    aggregation = hybrid.aggregation_process(dataclasses.replace(exp.cfg, seed=seed), update_type)
    state, noise = aggregation.initialize(), []
    zeros = [np.zeros(t.shape, t.dtype) for t in update_type]
    for _ in range(rounds):
        noise.append(random_noise.round_noise(aggregation, state, update_type))
        state = aggregation.next(state, [zeros], [np.float32(1.0)]).state
    return noise


def test_two_runs_with_one_seed_add_identical_dp_noise_and_the_measurement_replays_it(make_run):
    # Two of the config's three rounds: no export (a SavedModel costs seconds), the measurement replays to round 2.
    one_go, chunked = make_run("one_go", **DP), make_run("chunked", **DP)
    program.train_until_round(one_go.root, 2)
    program.train_until_round(chunked.root, 1)
    program.train_until_round(chunked.root, 2)
    exp = program.load_experiment(one_go.root)
    noise, again = _noise_per_round(exp, one_go, 2), _noise_per_round(exp, chunked, 2, set_seed=1)
    # Same seed: the same noise every round, although the second build was traced under tf.random.set_seed(1)
    # (the tutorial's pitfall does not reach stateless ops whose seed is in the state).
    for a, b in zip(noise, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(noise[0], noise[1])  # never the same noise every round
    for a, b in zip(noise, _noise_of_seed(exp, 5, 2), strict=True):
        assert not np.allclose(a, b)
    expected = DP["dp_clip"] * DP["noise_multiplier"] / 3  # make_run: 3 clients per round
    assert np.std(np.concatenate(noise)) == pytest.approx(expected, rel=0.05)

    results = random_noise.project_dp_noise(program.load_experiment(chunked.root))
    assert results["replay_max_weight_difference"] == 0.0  # a one-go replay ends with the chunked run's weights
    assert results["dp_noise_replay_max_difference"] == results["dp_noise_rebuild_max_difference"] == 0.0
    assert results["dp_noise_round_1_fresh_max_difference"] == 0.0
    assert results["dp_noise_differs_every_round"] == results["dp_noise_other_seed_differs"] == 1.0
    assert results["dp_noise_rounds"] == 2
    assert results["dp_noise_stddev_ratio"] == pytest.approx(1.0, abs=0.05)


def test_the_dp_noise_measurement_names_the_fields_it_needs(make_run):
    exp = program.load_experiment(make_run("plain").root)
    with pytest.raises(random_noise.Error, match=r"aggregator='dp'.*Got aggregator='mean'.*Fix:"):
        random_noise.project_dp_noise(exp)


def test_the_round_0_weights_are_a_function_of_the_seed_whatever_was_drawn_or_traced_before(make_run):
    exp = program.load_experiment(make_run("weights", **DP).root)
    first = exp.process.get_model_weights(program.initial_state(exp)).trainable
    tf.random.set_seed(7)  # the tutorial's pitfall around it: a global seed, draws, a re-traced tf.function
    tf.function(lambda _: tf.random.normal([]))(1), tf.random.uniform([3])
    again = exp.process.get_model_weights(program.initial_state(exp)).trainable
    other = exp.process.get_model_weights(program.initial_state(_with_seed(exp, 1))).trainable
    tf.random.set_seed(None)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        if np.any(a):  # the kernels; biases start at zero whatever the seed
            assert not np.allclose(a, c)


def _with_seed(exp, seed: int):
    return dataclasses.replace(exp, cfg=dataclasses.replace(exp.cfg, seed=seed))
