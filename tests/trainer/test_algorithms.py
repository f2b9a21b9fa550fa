"""Every algorithm trains (loss falls, weights move), and chunks/resume change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import config, metrics_log
from tests.trainer.conftest import checkpoint
from trainer import algorithms, program

# Server learning rates in each algorithm's usual range (adaptive optimizers want small ones).
SERVER_LR = {"fedadam": 0.05, "fedyogi": 0.05, "fedadagrad": 0.1}


def test_the_algorithm_table_matches_the_config_enum():
    assert set(algorithms.ALGORITHMS) == set(config.ALGORITHMS)


# fed_recon factorises ratings (tests/trainer/test_reconstruction.py), not these images
@pytest.mark.parametrize("algorithm", config.HYBRID_ALGORITHMS)
def test_each_algorithm_lowers_the_training_loss_and_moves_the_weights(make_run, algorithm):
    run = make_run(algorithm=algorithm, server_learning_rate=SERVER_LR.get(algorithm, 1.0),
                   client_learning_rate=0.2, proximal_strength=0.1)
    assert program.train_until_round(run.root, 4) == 4
    rows = metrics_log.read_rows(run.metrics)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    start, end = checkpoint(run, 0).leaves, checkpoint(run).leaves
    assert any(not np.array_equal(a, b) for a, b in zip(start, end, strict=True))


@pytest.mark.parametrize(("algorithm", "sampling"), [("fedadam", "poisson"), ("fedprox", "uniform")])
def test_a_chunked_resumed_run_equals_one_run_in_one_go(make_run, algorithm, sampling):
    common = {"algorithm": algorithm, "client_sampling": sampling, "server_learning_rate": 0.05}
    one_go, chunked = make_run("one_go", **common), make_run("chunked", **common)
    program.train_until_round(one_go.root, 4)
    program.train_until_round(chunked.root, 1)
    program.train_until_round(chunked.root, 3)  # a new Experiment: restores state incl. optimizer state
    program.train_until_round(chunked.root, 4)
    for a, b in zip(checkpoint(one_go).leaves, checkpoint(chunked).leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    assert metrics_log.read_rows(one_go.metrics)[-1]["train_loss"] == metrics_log.read_rows(chunked.metrics)[-1][
        "train_loss"
    ]


def test_poisson_sampling_is_seeded_independent_per_client_and_may_be_empty():
    cfg = config.ExperimentConfig(num_clients=20, clients_per_round=2, client_sampling="poisson")
    ids = [f"c{i}" for i in range(20)]
    counts = [len(program.sample_clients(cfg, r, ids)) for r in range(1, 2001)]
    assert program.sample_clients(cfg, 5, ids) == program.sample_clients(cfg, 5, ids)
    assert np.mean(counts) == pytest.approx(2.0, abs=0.15)  # q * N = 0.1 * 20
    assert 0 in counts and len(set(counts)) > 3


def test_uniform_sampling_draws_exactly_clients_per_round_distinct_clients():
    cfg = config.ExperimentConfig(num_clients=20, clients_per_round=7)
    ids = [f"c{i}" for i in range(20)]
    for r in range(1, 50):
        sampled = program.sample_clients(cfg, r, ids)
        assert len(set(sampled)) == 7


def test_heldout_clients_never_train_and_are_evaluated_federatedly(make_run, staged):
    run = make_run(heldout_clients=2, clients_per_round=4, eval_every=2)
    program.train_until_round(run.root, 2)
    rows = metrics_log.read_rows(run.metrics)
    assert "heldout_accuracy" not in rows[0]
    assert rows[1]["heldout_examples"] == 2 * 24  # the last two synthetic clients, 24 examples each
    assert 0 <= rows[1]["heldout_accuracy"] <= 1
    assert all(r["train_examples"] == 4 * 24 for r in rows)  # exactly the four training clients


def test_custom_aggregator_and_heldout_settings_are_checked_in_the_config():
    with pytest.raises(config.ConfigError, match="custom_aggregator must be set exactly when"):
        config.ExperimentConfig(aggregator="custom")
    with pytest.raises(config.ConfigError, match=r"num_clients - heldout_clients \(8\)"):
        config.ExperimentConfig(num_clients=10, heldout_clients=2, clients_per_round=9)


def test_an_empty_poisson_round_still_adds_dp_noise(make_run):
    # With 6 clients and q = 1/6, some rounds sample nobody; a DP round must still release noise.
    run = make_run(aggregator="dp", algorithm="fedavg_unweighted", clients_per_round=1, client_sampling="poisson",
                   noise_multiplier=0.05, dp_clipping="fixed", dp_epsilon_budget=0, rounds=12, rounds_per_chunk=12)
    cfg = config.ExperimentConfig.read_json(run.config)
    ids = [f"c{i}" for i in range(6)]
    empty = next(r for r in range(1, 13) if not program.sample_clients(cfg, r, ids))
    program.train_until_round(run.root, empty)
    before, after = checkpoint(run, empty - 1).leaves, checkpoint(run, empty).leaves
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert metrics_log.read_rows(run.metrics)[-1]["clients_sampled"] == 0
