"""Federated reconstruction (algorithm fed_recon): real TFF rounds on a tiny synthetic ratings data set with
MovieLens' staged layout; chunks and resume, per-round metrics, export, the trivial predictors, and what the
server state holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks import atomic, metrics_log, shards
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from tasks.sources import movielens
from tests.trainer.conftest import checkpoint
from trainer import program, reconstruction

NUM_ITEMS = 20  # item ids 1..20, so 21 embedding rows
DIM = 4


def synthetic_user(user_id: str, rng: np.random.Generator, items: np.ndarray) -> shards.Client:
    """A user rating 10-16 items by a rank-2 preference: rating = clip(round(3 + u . v), 1, 5)."""
    n = int(rng.integers(10, 17))
    chosen = rng.choice(np.arange(1, NUM_ITEMS + 1), size=n, replace=False)
    u = rng.normal(0, 1, 2)
    ratings = np.clip(np.round(3 + items[chosen] @ u), 1, 5).astype(np.float32)
    return shards.Client(
        user_id, {"item_id": chosen.astype(np.int64), "rating": ratings, "timestamp": np.arange(n, dtype=np.int64)}
    )


@pytest.fixture(scope="module")
def ratings_staged(tmp_path_factory):
    rng = np.random.default_rng(11)
    items = rng.normal(0, 0.8, (NUM_ITEMS + 1, 2))
    out = tmp_path_factory.mktemp("ratings")
    shards.write_dataset(
        out,
        {
            "train": [synthetic_user(f"{i}", rng, items) for i in range(1, 9)],
            "test": [synthetic_user(f"{i}", rng, items) for i in range(9, 11)],
        },
        movielens.schema(),
        metadata={
            "dataset": "movielens",
            "fingerprint": "synthetic",
            "settings": {},
            "source": {"name": "movielens", "max_item_id": NUM_ITEMS},
        },
    )
    return out


def make_recon_run(tmp_path, staged, name: str, **overrides) -> RunPaths:
    cfg = ExperimentConfig(
        **{
            "dataset": "movielens",
            "algorithm": "fed_recon",
            "model": "matrix_factorization",
            "split": "by_client",
            "recipe": "reconstruction",
            "num_clients": 8,
            "heldout_clients": 2,
            "clients_per_round": 3,
            "batch_size": 3,
            "embedding_dim": DIM,
            "rounds": 2,
            "rounds_per_chunk": 1,
            "eval_every": 1,
            "keep_checkpoints": 100,
            **overrides,
        }
    )
    run = RunPaths(tmp_path / name)
    run.root.mkdir()
    atomic.write_json(run.config, cfg.to_dict())
    atomic.write_json(run.staged, {"path": str(staged), "fingerprint": "synthetic"})
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ratings_staged):
    """The same run twice: in one go, and in two chunks (a new trainer experiment each: resume)."""
    base = tmp_path_factory.mktemp("recon_runs")
    one_go, chunked = make_recon_run(base, ratings_staged, "one_go"), make_recon_run(base, ratings_staged, "chunked")
    assert program.train_until_round(one_go.root, 2) == 2
    assert program.train_until_round(chunked.root, 1) == 1
    assert not chunked.final.exists()  # only the chunk that reaches the last round exports
    assert program.train_until_round(chunked.root, 2) == 2
    assert program.train_until_round(chunked.root, 2) == 2  # idempotent: nothing left to do
    return one_go, chunked


@pytest.fixture(scope="module")
def exp(runs):
    """The finished run's experiment, as a new trainer process loads it."""
    return program.load_experiment(runs[0].root)


def test_a_run_in_two_chunks_ends_with_the_state_and_metrics_of_one_run(runs):
    one_go, chunked = runs
    for a, b in zip(checkpoint(one_go).leaves, checkpoint(chunked).leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(checkpoint(one_go, 0).leaves[0], checkpoint(one_go).leaves[0])  # items trained

    def values(run):
        return [
            {k: v for k, v in r.items() if k not in ("round_seconds", "wall_time")}
            for r in metrics_log.read_rows(run.metrics)
        ]

    assert values(one_go) == values(chunked)


def test_every_round_logs_train_mse_and_rating_accuracy_and_eval_rounds_val_and_test_users(runs):
    rows = metrics_log.read_rows(runs[0].metrics)
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["clients_sampled"] == 3 and row["train_mse"] == row["train_loss"] > 0
        assert 0 <= row["train_rating_accuracy"] <= 1
        for split, users in (("val", 2), ("test", 2)):
            assert row[f"{split}_mse"] > 0 and 0 <= row[f"{split}_rating_accuracy"] <= 1
            assert 0 < row[f"{split}_examples"] < 16 * users  # only the scored half of their ratings
        assert (row["test_loss"], row["test_accuracy"]) == (row["test_mse"], row["test_rating_accuracy"])
        assert row["heldout_accuracy"] == row["val_rating_accuracy"]


def test_export_writes_final_test_values_and_the_item_embeddings_as_an_mlflow_model(runs):
    run = runs[0]
    final = atomic.read_json(run.final)
    last = metrics_log.read_rows(run.metrics)[-1]
    assert final["round"] == 2 and final["test_mse"] == pytest.approx(last["test_mse"])
    assert final["test_rating_accuracy"] == pytest.approx(last["test_rating_accuracy"])
    assert (final["test_loss"], final["test_accuracy"]) == (final["test_mse"], final["test_rating_accuracy"])
    assert final["num_parameters"] == (NUM_ITEMS + 1) * DIM
    assert (run.model / "MLmodel").is_file() and "tensorflow" in (run.model / "MLmodel").read_text()


def test_the_server_state_holds_only_item_embeddings_never_a_user_embedding(runs, exp):
    state = reconstruction.load_state(exp)
    weights = exp.process.get_model_weights(state)
    assert [np.shape(w) for w in weights.trainable] == [(NUM_ITEMS + 1, DIM)] and list(weights.non_trainable) == []
    tensors = [np.asarray(leaf) for leaf in checkpoint(runs[0]).leaves if np.ndim(leaf) > 0]
    assert [t.shape for t in tensors] == [(NUM_ITEMS + 1, DIM)]  # everything the server keeps, checkpointed
    local = reconstruction.ReconstructionModel.get_local_variables(exp.model_fn())
    assert [tuple(v.shape) for v in local.trainable] == [(1, DIM)]  # the user embedding exists, on the client
    results = json.loads((runs[0].root / "recipe_results.json").read_text())
    assert results["server_state_values_besides_item_embeddings"] == 0
    assert results["server_state_user_embedding_tensors"] == 0 and results["client_user_embedding_values"] == DIM
    assert results["server_item_embedding_values"] == (NUM_ITEMS + 1) * DIM


def test_the_trivial_predictors_are_fitted_on_training_users_and_scored_on_the_evaluated_test_ratings(runs, exp):
    users = reconstruction.Users.read(exp)
    assert (len(users.train), len(users.val), len(users.test)) == (6, 2, 2)
    train = np.concatenate([u.ratings for u in users.train.values()])
    scored = reconstruction.scored_ratings(exp.cfg, users.test, users.index)
    results = json.loads((runs[0].root / "recipe_results.json").read_text())
    assert results["global_mean_rating"] == pytest.approx(float(np.mean(train)))
    assert results["global_mean_test_mse"] == pytest.approx(float(np.mean((scored - np.mean(train)) ** 2)))
    assert results["test_ratings_scored"] == len(scored) == atomic.read_json(runs[0].final)["test_examples"]
    mode = results["most_frequent_rating"]
    assert np.sum(train == mode) == np.max(np.unique(train, return_counts=True)[1])
    assert results["most_frequent_test_rating_accuracy"] == pytest.approx(float(np.mean(np.abs(scored - mode) <= 0.5)))


def test_a_constant_predictor_scores_mse_and_rating_accuracy_within_half_a_star():
    mse, accuracy = reconstruction.constant_predictor(3.5, np.array([3.0, 4.0, 5.0, 1.0], np.float32))
    assert mse == pytest.approx((0.25 + 0.25 + 2.25 + 6.25) / 4) and accuracy == 0.5


def test_ratings_without_an_item_count_or_image_data_are_refused_with_the_fix(tmp_path, ratings_staged, staged):
    staged_manifest = shards.Manifest.read(ratings_staged)
    manifest = shards.Manifest(staged_manifest.root, {**staged_manifest.data, "source": {}})
    with pytest.raises(reconstruction.Error, match="max_item_id.*Fix: stage the data set with dataset='movielens'"):
        reconstruction.num_items(manifest)
    run = make_recon_run(tmp_path, staged, "images")
    with pytest.raises(reconstruction.Error, match="factorises a ratings data set.*holds image data"):
        program.load_experiment(run.root)
