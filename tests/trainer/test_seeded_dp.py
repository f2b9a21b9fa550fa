"""DP noise is a function of (seed, round): a resumed DP run equals an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tasks import metrics_log
from tests.trainer.conftest import checkpoint
from trainer import program, seeded_dp

DP = {"aggregator": "dp", "algorithm": "fedavg_unweighted", "clients_per_round": 6, "noise_multiplier": 0.5,
      "dp_epsilon_budget": 0, "dp_clip": 1.0}


@pytest.mark.parametrize("clipping", ["adaptive", "fixed"])
def test_a_chunked_resumed_dp_run_adds_the_same_noise_as_one_run(make_run, clipping):
    one_go, chunked = make_run("one_go", **DP, dp_clipping=clipping), make_run("chunked", **DP, dp_clipping=clipping)
    program.train_until_round(one_go.root, 3)
    program.train_until_round(chunked.root, 1)
    program.train_until_round(chunked.root, 3)
    for a, b in zip(checkpoint(one_go).leaves, checkpoint(chunked).leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    clip_key = "aggregator/zeroing/dp_query_metrics/clip"
    if clipping == "adaptive":  # the clip estimate moved, identically in both runs
        clips = [r[clip_key] for r in metrics_log.read_rows(chunked.metrics)]
        assert clips == [r[clip_key] for r in metrics_log.read_rows(one_go.metrics)] and len(set(clips)) > 1


def test_the_noise_has_the_configured_stddev_and_changes_every_round():
    query = seeded_dp.SeededGaussianSumQuery(1.0, 2.0, seed=3, stream=1)
    state = query.initial_global_state()
    zeros = [tf.zeros([200, 100])]
    first, state_after, _ = query.get_noised_result(zeros, state)
    again, _, _ = query.get_noised_result(zeros, state)
    second, _, _ = query.get_noised_result(zeros, state_after)
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())  # same (seed, round): same noise
    assert not np.allclose(first[0].numpy(), second[0].numpy())  # next round: fresh noise
    assert np.std(first[0].numpy()) == pytest.approx(2.0, rel=0.03)
    other = seeded_dp.SeededGaussianSumQuery(1.0, 2.0, seed=4, stream=1)
    assert not np.allclose(first[0].numpy(), other.get_noised_result(zeros, other.initial_global_state())[0][0])
