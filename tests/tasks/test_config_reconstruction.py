"""fed_recon at resolve time (no TensorFlow): it goes with matrix_factorization and movielens, on the tff
engine with the plain mean and users split by client; its own settings are bounded."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import recipes, shards, validate
from tasks.config import ConfigError, ExperimentConfig
from tasks.sources import movielens

RECON = {"algorithm": "fed_recon", "model": "matrix_factorization", "dataset": "movielens", "split": "by_client"}


def test_fed_recon_with_its_model_and_movielens_is_trainable_with_the_tutorials_defaults():
    cfg = ExperimentConfig(**RECON)
    cfg.check_trainable()
    assert (cfg.embedding_dim, cfg.reconstruction_learning_rate, cfg.reconstruction_epochs) == (50, 0.1, 1)


@pytest.mark.parametrize(
    "partial",
    [
        {"algorithm": "fed_recon"},
        {"algorithm": "fed_recon", "dataset": "movielens", "split": "by_client"},
        {"model": "matrix_factorization"},
        {"model": "matrix_factorization", "algorithm": "fed_recon", "dataset": "digits"},
    ],
)
def test_fed_recon_its_model_and_movielens_only_come_together(partial):
    with pytest.raises(ConfigError, match=r"only together.*Got \{.*\}\. Fix: set all three"):
        ExperimentConfig(**partial)


def test_movielens_alone_still_stages_but_classifier_training_on_it_is_refused():
    cfg = ExperimentConfig(dataset="movielens")
    with pytest.raises(ConfigError, match="federated_data DAG"):
        cfg.check_trainable()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"engine": "hybrid"}, r"'fed_recon' runs on the 'tff' engine only. Got engine='hybrid'. Fix: engine='tff'"),
        ({"aggregator": "robust"}, r"Got \{'aggregator': 'robust'\}.*aggregator='mean'"),
        ({"compress": True}, r"Got \{'compress': True\}.*compress=false"),
        ({"split": "within_client"}, r"never trained on.*Got split='within_client'. Fix: split='by_client'"),
        ({"split": "auto"}, r"Got split='auto'. Fix: split='by_client'"),
    ],
)
def test_fed_recon_refuses_settings_it_cannot_honour_naming_the_fix(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**{**RECON, **change})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reconstruction_learning_rate", 0.0, "reconstruction_learning_rate must be > 0"),
        ("reconstruction_epochs", 0, "reconstruction_epochs must be >= 1"),
        ("embedding_dim", 0, "embedding_dim must be >= 1"),
        ("embedding_dim", 2000, "embedding_dim must be >= 1 and <= 1024"),
    ],
)
def test_the_reconstruction_settings_are_bounded(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**{**RECON, field: value})


def test_the_reconstruction_recipe_splits_users_into_train_val_test_with_50_per_round():
    recipe = recipes.load("reconstruction")
    cfg = ExperimentConfig.from_mapping({**recipe.settings(), "recipe": "reconstruction"})
    test_users = round(cfg.num_clients * cfg.test_fraction)
    train_users = cfg.num_clients - cfg.heldout_clients
    assert (train_users, cfg.heldout_clients, test_users) == (764, 85, 85)
    assert cfg.clients_per_round == 50 and cfg.embedding_dim == 50 and cfg.batch_size == 5
    assert (cfg.client_learning_rate, cfg.server_learning_rate, cfg.reconstruction_learning_rate) == (0.5, 1.0, 0.1)
    tiny = ExperimentConfig.from_mapping({**recipe.settings("tiny"), "recipe": "reconstruction"})
    assert (tiny.num_clients - tiny.heldout_clients, tiny.heldout_clients, tiny.clients_per_round) == (90, 10, 10)


def _ratings_manifest(tmp_path, source: dict) -> shards.Manifest:
    user = shards.Client(
        "1",
        {
            "item_id": np.array([1, 2], np.int64),
            "rating": np.array([4.0, 3.0], np.float32),
            "timestamp": np.array([0, 1], np.int64),
        },
    )
    tmp_path.mkdir()
    shards.write_dataset(
        tmp_path,
        {"train": [user], "test": [user]},
        movielens.schema(),
        metadata={"dataset": "movielens", "fingerprint": "t", "settings": {}, "source": source},
    )
    return shards.Manifest.read(tmp_path)


def test_validation_passes_matrix_factorization_on_staged_ratings_and_refuses_it_elsewhere(tmp_path):
    cfg = ExperimentConfig(**RECON)
    assert validate._check_model(_ratings_manifest(tmp_path / "ok", {"max_item_id": 2}), cfg).success
    check = validate._check_model(_ratings_manifest(tmp_path / "no_items", {}), cfg)
    assert not check.success and "max_item_id" in str(check) and "Fix: dataset='movielens'" in str(check)
