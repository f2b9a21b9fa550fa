"""The recipe custom_federated_algorithms (TFF's tutorial custom_federated_algorithms_2) in small: the tutorial's
Federated Core computations for 64 inputs, the closed-form initial loss, the one-label property, and the
learning process plugged into the trainer (loss falls, the learning rate decays, a resumed run equals an
uninterrupted one). The recipe's own tiny run on the digits is in test_every_recipe_tiny.py."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

from tasks import atomic, metrics_log
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from tests.trainer.conftest import NUM_CLASSES, checkpoint
from trainer import custom_federated_algorithms as fc
from trainer import models, program

FC_FEDAVG = "trainer.custom_federated_algorithms:fedavg_from_primitives"
TUTORIAL_BATCH = collections.OrderedDict(x=tf.TensorSpec([None, 64], tf.float32), y=tf.TensorSpec([None], tf.int32))


@pytest.fixture(scope="module")
def tutorial():
    """The tutorial's computations with its batch and model types, 64 inputs instead of 784."""
    return fc.build_computations(TUTORIAL_BATCH, 64, 10)


def _zero_model(num_features=64, num_classes=10):
    return collections.OrderedDict(
        weights=np.zeros([num_features, num_classes], np.float32), bias=np.zeros([num_classes], np.float32)
    )


def _one_digit_batches(rng, digit, num_examples, batch_size):
    """A client holding one digit: 8x8 images with the digit's own bright pixel pattern, in tutorial batches."""
    pattern = np.zeros(64, np.float32)
    pattern[digit * 6 : digit * 6 + 6] = 1.0
    x = np.clip(pattern + rng.uniform(0, 0.3, (num_examples, 64)), 0, 1).astype(np.float32)
    y = np.full(num_examples, digit, np.int32)
    return [{"x": x[i : i + batch_size], "y": y[i : i + batch_size]} for i in range(0, num_examples, batch_size)]


def test_the_tutorials_computations_have_its_types_with_64_inputs(tutorial):
    model = "<weights=float32[64,10],bias=float32[10]>"
    batch = "<x=float32[?,64],y=int32[?]>"
    assert str(tutorial.model_type) == model and str(tutorial.batch_type) == batch
    assert str(tutorial.batch_loss.type_signature) == f"(<model={model},batch={batch}> -> float32)"
    assert str(tutorial.batch_train.type_signature) == (
        f"(<initial_model={model},batch={batch},learning_rate=float32> -> {model})"
    )
    assert str(tutorial.local_train.type_signature) == (
        f"(<initial_model={model},learning_rate=float32,all_batches={batch}*> -> {model})"
    )
    assert str(tutorial.local_eval.type_signature) == f"(<model={model},all_batches={batch}*> -> float32)"
    assert str(tutorial.federated_eval.type_signature) == (
        f"(<model={model}@SERVER,data={{{batch}*}}@CLIENTS> -> float32@SERVER)"
    )
    assert str(tutorial.federated_train.type_signature) == (
        f"(<model={model}@SERVER,learning_rate=float32@SERVER,data={{{batch}*}}@CLIENTS> -> {model}@SERVER)"
    )


def test_the_zero_models_batch_loss_is_ln_10_and_batch_train_lowers_it(tutorial):
    batch = _one_digit_batches(np.random.default_rng(0), 5, 100, 100)[0]
    assert tutorial.batch_loss(_zero_model(), batch) == pytest.approx(math.log(10), abs=1e-6)  # tutorial: 2.3025851
    model, losses = _zero_model(), []
    for _ in range(5):
        model = tutorial.batch_train(model, batch, 0.1)
        losses.append(float(tutorial.batch_loss(model, batch)))
    assert losses == sorted(losses, reverse=True) and losses[-1] < math.log(10)


def test_the_initial_federated_loss_is_the_mean_over_clients_of_batches_times_ln_10(tutorial):
    rng = np.random.default_rng(1)
    sizes = [100, 37, 64]  # 10, 4 and 7 batches of 10
    data = [_one_digit_batches(rng, digit, n, 10) for digit, n in enumerate(sizes)]
    closed_form = np.mean([math.ceil(n / 10) for n in sizes]) * math.log(10)  # 7 x ln 10 = 16.118
    assert abs(tutorial.federated_eval(_zero_model(), data) - closed_form) <= 1e-5
    assert [float(v) for v in tutorial.client_losses(_zero_model(), data)] == pytest.approx(
        [math.ceil(n / 10) * math.log(10) for n in sizes], abs=1e-5
    )


def test_training_on_one_digit_fits_its_client_and_raises_every_other_clients_loss(tutorial):
    rng = np.random.default_rng(2)
    data = [_one_digit_batches(rng, digit, 50, 10) for digit in range(10)]  # the tutorial's ten one-digit clients
    got = fc.one_label_property(tutorial, _zero_model(), data, client=5, learning_rate=0.1)
    assert got["one_label_own_loss_after"] < got["one_label_own_loss_before"] == pytest.approx(5 * math.log(10))
    assert got["one_label_others_min_loss_after"] > got["one_label_others_max_loss_before"]
    assert got["one_label_others_rising"] == got["one_label_others"] == 9
    assert got["one_label_federated_loss_after"] > got["one_label_federated_loss_before"]


def _model_fn(model="softmax"):
    return models.tff_model_fn(model, (8, 8, 1), NUM_CLASSES)


def test_settings_the_tutorials_model_averaging_would_ignore_are_refused_naming_the_fix():
    for overrides, named in (
        ({"server_learning_rate": 0.5}, "server_learning_rate"),
        ({"aggregator": "robust"}, "aggregator"),
        ({"model": "mlp"}, "model='mlp'"),
    ):
        cfg = ExperimentConfig(**{"learning_process": FC_FEDAVG, "model": "softmax", **overrides})
        with pytest.raises(fc.Error, match=f"{named}.*Fix:"):
            fc.fedavg_from_primitives(cfg, _model_fn())
    with pytest.raises(fc.Error, match=r"softmax regression.*Fix: model='softmax'"):
        fc.build_fedavg_from_primitives(_model_fn("mlp"), learning_rate=0.1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, staged):
    """Two runs of the process through the trainer, 6 synthetic clients (4 classes, 3 batches each) all training
    every round, decay 0.5: one in two chunks (resumed at round 2), one uninterrupted."""
    created = {}
    for name, per_chunk in (("chunked", 2), ("whole", 4)):
        cfg = ExperimentConfig(
            num_clients=6,
            clients_per_round=6,
            client_sampling="fixed",
            min_examples_per_client=1,
            model="softmax",
            learning_process=FC_FEDAVG,
            client_learning_rate=0.5,
            client_learning_rate_decay=0.5,
            local_epochs=1,
            batch_size=8,
            rounds=4,
            rounds_per_chunk=per_chunk,
            eval_every=4,
            keep_checkpoints=100,
        )
        run = RunPaths(tmp_path_factory.mktemp(name))
        atomic.write_json(run.config, cfg.to_dict())
        atomic.write_json(run.staged, {"path": str(staged), "fingerprint": "synthetic"})
        for chunk in range(cfg.num_chunks):
            program.train_until_round(run.root, cfg.chunk_target_round(chunk))
        created[name] = run
    return created


def test_a_plugged_in_run_logs_the_closed_form_first_and_the_tutorials_loss_falling_every_round(runs):
    rows = metrics_log.read_rows(runs["whole"].metrics)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert abs(rows[0]["client_work/federated_loss_before"] - 3 * math.log(NUM_CLASSES)) <= 1e-5  # 24 examples / 8
    losses = [r["train_loss"] for r in rows]
    assert losses == sorted(losses, reverse=True) and losses[0] < rows[0]["client_work/federated_loss_before"]
    assert [r["client_work/learning_rate"] for r in rows] == [0.5, 0.25, 0.125, 0.0625]  # 0.5 x 0.5^(r-1), exact
    assert all(r["train_examples"] == 6 * 24 and 0 <= r["train_accuracy"] <= 1 for r in rows)
    assert "test_accuracy" in rows[-1] and (runs["whole"].model / "MLmodel").exists()


def test_a_run_resumed_between_chunks_ends_like_an_uninterrupted_one_with_the_same_learning_rates(runs):
    chunked, whole = checkpoint(runs["chunked"]), checkpoint(runs["whole"])
    assert chunked.round_num == whole.round_num == 4
    assert [np.shape(leaf) for leaf in whole.leaves] == [(64, NUM_CLASSES), (NUM_CLASSES,), ()]  # kernel, bias, round
    assert int(whole.leaves[-1]) == 4
    for a, b in zip(chunked.leaves, whole.leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    drop = ("round_seconds", "wall_time")
    assert [{k: v for k, v in r.items() if k not in drop} for r in metrics_log.read_rows(runs["chunked"].metrics)] == [
        {k: v for k, v in r.items() if k not in drop} for r in metrics_log.read_rows(runs["whole"].metrics)
    ]
