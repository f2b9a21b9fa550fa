"""sparse_select at resolve time (no TensorFlow): it goes with bag_of_words_logistic and the shakespeare roles of
at least two listed plays, on the tff engine with its own sparse sum; the recipe's variants are valid."""

from __future__ import annotations

import pytest

from tasks import recipes
from tasks.config import ALGORITHMS, HYBRID_ALGORITHMS, MODELS, ConfigError, ExperimentConfig

SPARSE = {
    "algorithm": "sparse_select",
    "model": "bag_of_words_logistic",
    "dataset": "shakespeare",
    "plays": "hamlet,macbeth",
}


def test_sparse_select_with_its_model_and_plays_is_trainable_with_the_tutorials_six_rows():
    cfg = ExperimentConfig.from_mapping(SPARSE)
    cfg.check_trainable()
    assert (cfg.max_tokens_per_client, cfg.vocab_size) == (6, 10000)
    assert "sparse_select" in ALGORITHMS and "bag_of_words_logistic" in MODELS
    assert "sparse_select" not in HYBRID_ALGORITHMS


@pytest.mark.parametrize(
    "partial",
    [
        {"algorithm": "sparse_select"},
        {"algorithm": "sparse_select", "dataset": "shakespeare", "plays": "hamlet,lear"},
        {"model": "bag_of_words_logistic"},
        {"model": "bag_of_words_logistic", "algorithm": "sparse_select", "dataset": "movielens"},
    ],
)
def test_sparse_select_its_model_and_the_plays_only_come_together(partial):
    with pytest.raises(
        ConfigError,
        match=r"'sparse_select' trains model 'bag_of_words_logistic' on dataset "
        r"'shakespeare', and only together\. Got .* Fix: set all three",
    ):
        ExperimentConfig.from_mapping(partial)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"engine": "hybrid"},
            r"'sparse_select' runs on the 'tff' engine only\. Got engine='hybrid'\. Fix: engine='tff'",
        ),
        ({"aggregator": "robust"}, r"Got \{'aggregator': 'robust'\}\. Fix: engine='tff', aggregator='mean'"),
        ({"compress": True}, r"Got \{'compress': True\}"),
        ({"learning_process": "trainer.tutorial_algorithms:hand_built_fedavg"}, r"Got \{'learning_process'"),
        ({"plays": "hamlet"}, r"plays must name at least two\. Got plays='hamlet'\. Fix: e\.g\. plays="),
        ({"plays": ""}, r"plays must name at least two\. Got plays=''"),
        (
            {"vocab_size": 10, "max_tokens_per_client": 12},
            r"max_tokens_per_client must be <= vocab_size \+ 1 = 11 \(the model's rows\)\. Got 12\. Fix:",
        ),
    ],
)
def test_sparse_select_refuses_settings_it_cannot_honour_naming_the_fix(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_mapping({**SPARSE, **change})


@pytest.mark.parametrize(("field", "value"), [("vocab_size", 0), ("max_tokens_per_client", 0)])
def test_the_sparse_sizes_are_bounded(field, value):
    with pytest.raises(ConfigError, match=rf"{field} must be >= 1 and <= \d+\. Got 0"):
        ExperimentConfig.from_mapping({**SPARSE, field: value})


def test_the_recipe_selects_500_of_10001_rows_per_role_and_its_tiny_variant_is_valid():
    recipe = recipes.load("sparse_federated_learning")
    cfg = ExperimentConfig.from_mapping({**recipe.settings(), "recipe": "sparse_federated_learning"})
    cfg.check_trainable()
    assert (cfg.algorithm, cfg.model, cfg.dataset, cfg.split) == (
        "sparse_select",
        "bag_of_words_logistic",
        "shakespeare",
        "by_client",
    )
    assert (cfg.vocab_size, cfg.max_tokens_per_client, len(cfg.parsed_plays)) == (10000, 500, 14)
    tiny = ExperimentConfig.from_mapping({**recipe.settings("tiny"), "recipe": "sparse_federated_learning"})
    assert tiny.rounds <= 3 and tiny.num_clients <= 30
    assert {c["name"] for c in recipe.checks} >= {
        "federated_select_example_exact",
        "toy_run_matches_the_tutorial",
        "clients_receive_exactly_their_rows",
        "bytes_equal_rows_times_row_size",
    }
