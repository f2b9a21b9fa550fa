"""Server momentum (the optimizers and differential_privacy recipes): the server SGD of both engines
carries it, and it changes training from the second round on, as momentum does."""

from __future__ import annotations

import pytest
import tensorflow as tf

from tasks import metrics_log
from tasks.config import ExperimentConfig
from trainer import algorithms, program


def hparams(cfg: ExperimentConfig) -> dict:
    optimizer = algorithms.server_optimizer(cfg)
    return dict(optimizer.get_hparams(optimizer.initialize([tf.TensorSpec([2], tf.float32)])))


def test_the_server_optimizer_is_sgd_with_the_configured_momentum_and_none_without():
    assert hparams(ExperimentConfig(server_learning_rate=0.05, server_momentum=0.9)) == pytest.approx(
        {"learning_rate": 0.05, "momentum": 0.9}
    )
    assert hparams(ExperimentConfig(server_learning_rate=1.0)) == pytest.approx({"learning_rate": 1.0})


def test_server_momentum_is_in_the_learning_state_and_changes_training_from_round_two(make_run):
    common = {"rounds": 3, "rounds_per_chunk": 3, "eval_every": 2, "server_learning_rate": 0.5}  # no export at 2
    rows = {}
    for momentum in (0.0, 0.9):
        run = make_run(f"momentum_{momentum}", **common, server_momentum=momentum)
        exp = program.load_experiment(run.root)
        finalizer = exp.process.get_hparams(exp.process.initialize())["finalizer"]
        assert finalizer.get("momentum", 0.0) == pytest.approx(momentum)
        program.train_until_round(run.root, 2)
        rows[momentum] = metrics_log.read_rows(run.metrics)
    # SGD with momentum's first step is SGD's (the accumulator starts at 0): round 2 starts from the same model
    assert rows[0.9][1]["train_loss"] == pytest.approx(rows[0.0][1]["train_loss"], abs=1e-6)
    assert abs(rows[0.9][1]["test_loss"] - rows[0.0][1]["test_loss"]) > 1e-4  # its second step is not
