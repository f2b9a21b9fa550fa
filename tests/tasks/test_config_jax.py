"""JAX in a config: asking TFF to execute the JAX tutorial's computations fails at config resolution with the
limitation, the upstream issue and the fix; the jax engine takes the models and algorithms it trains."""

from __future__ import annotations

import pytest

from tasks import recipes
from tasks.config import ConfigError, ExperimentConfig
from tasks.config_jax import JAX_ALGORITHMS, JAX_MODELS, UPSTREAM_ISSUE


def test_asking_tff_to_execute_jax_computations_names_the_limitation_the_issue_and_the_fix():
    with pytest.raises(ConfigError) as error:
        ExperimentConfig.from_mapping({"engine": "tff_jax", "model": "softmax"})
    message = str(error.value)
    assert "engine 'tff_jax'" in message and "Got engine='tff_jax'" in message
    assert "cannot execute them" in message and "Found computation of type 12" in message
    assert UPSTREAM_ISSUE == "google-parfait/tensorflow-federated#4166" and UPSTREAM_ISSUE in message
    assert "Fix: engine='jax'" in message


def test_the_same_request_through_a_recipe_fails_the_same_way():
    with pytest.raises(ConfigError, match="Fix: engine='jax'"):
        ExperimentConfig.from_mapping(recipes.apply({"recipe": "jax_support", "engine": "tff_jax"}))


def test_make_run_asking_for_it_stops_before_airflow_with_that_message(capsys):
    assert recipes.main(["trigger", "jax_support", "default", '{"engine": "tff_jax"}']) == 2
    error = capsys.readouterr().err
    assert error.startswith("make run: engine 'tff_jax'") and "Fix: engine='jax'" in error


def test_an_unknown_engine_still_gets_the_list_of_engines():
    with pytest.raises(ConfigError, match=r"engine must be one of \['tff', 'hybrid', 'jax'\]\. Got 'xla'"):
        ExperimentConfig(engine="xla")


@pytest.mark.parametrize("model", JAX_MODELS)
@pytest.mark.parametrize("algorithm", JAX_ALGORITHMS)
def test_the_jax_engine_takes_its_models_and_algorithms(model, algorithm):
    assert ExperimentConfig(engine="jax", model=model, algorithm=algorithm).engine == "jax"


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"model": "cnn"}, r"dense models \['softmax', 'mlp'\].*Got model='cnn'\. Fix: model='softmax' or 'mlp'"),
        ({"algorithm": "fedsgd"}, r"Got algorithm='fedsgd'\. Fix: engine='hybrid'"),
        ({"algorithm": "fedprox"}, r"Got algorithm='fedprox'\. Fix: engine='hybrid'"),
        (
            {"learning_process": "trainer.tutorial_algorithms:hand_built_fedavg"},
            r"runs on the 'tff' engine only.*Got engine='jax'\. Fix: engine='tff'",
        ),
        ({"corrupt_clients": 1}, r"Got engine='jax', corrupt_clients=1\. Fix: engine='hybrid'"),
    ],
)
def test_the_jax_engine_refuses_what_it_does_not_train_with_the_fix(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ExperimentConfig(engine="jax", **{"model": "softmax", **overrides})


def test_the_jax_support_recipe_resolves_at_every_size_on_the_jax_engine():
    recipe = recipes.load("jax_support")
    for variant in ("default", "full", "tiny"):
        cfg = ExperimentConfig.from_mapping(recipes.apply({"recipe": "jax_support", "recipe_variant": variant}))
        assert (cfg.engine, cfg.model) == ("jax", "softmax")
    assert {c["name"] for c in recipe.checks} >= {"add_numbers_type", "tff_cannot_execute_jax", "beats_majority_class"}
