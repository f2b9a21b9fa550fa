"""The learning_process plug-in's settings, checked where a run is resolved (no TensorFlow here): the
name's format, the engine it runs on, and the gradient clip only a plugged-in process reads."""

from __future__ import annotations

import pytest

from tasks import recipes
from tasks.config import ConfigError, ExperimentConfig
from tasks.config_schema import param_schemas

CLIPPING = "trainer.tutorial_algorithms:fedavg_with_gradient_clipping"


def test_a_learning_process_is_a_module_and_function_name_and_empty_means_the_built_in_algorithm():
    assert ExperimentConfig().learning_process == ""
    assert ExperimentConfig(learning_process="my_pkg.algos:build").learning_process == "my_pkg.algos:build"
    assert ExperimentConfig.from_mapping({"learning_process": None}).learning_process == ""  # the trigger form's empty
    for bad in ("my_pkg.algos", "my_pkg.algos:build()", "1pkg:build", "pkg:build:more", "pkg/algos:build"):
        with pytest.raises(ConfigError, match="learning_process must match"):
            ExperimentConfig(learning_process=bad)
    schema = param_schemas()["learning_process"]
    assert schema["type"] == ["string", "null"] and schema["section"] == "Algorithm"


def test_the_hybrid_engine_refuses_a_plugged_in_process_naming_the_fix():
    with pytest.raises(ConfigError, match=r"runs on the 'tff' engine only.*Fix: engine='tff'"):
        ExperimentConfig(learning_process=CLIPPING, engine="hybrid")


def test_a_gradient_clip_without_a_process_that_reads_it_is_refused():
    assert ExperimentConfig(learning_process=CLIPPING, client_gradient_clip=1.0).client_gradient_clip == 1.0
    assert ExperimentConfig(learning_process=CLIPPING, client_gradient_clip=2).client_gradient_clip == 2.0
    with pytest.raises(ConfigError, match="client_gradient_clip applies to a learning_process"):
        ExperimentConfig(client_gradient_clip=1.0)
    with pytest.raises(ConfigError, match="client_gradient_clip must be >= 0"):
        ExperimentConfig(learning_process=CLIPPING, client_gradient_clip=-1.0)


def test_the_recipe_plugs_in_the_clipping_process_and_a_user_can_change_its_clip():
    cfg = ExperimentConfig.from_mapping(recipes.apply({"recipe": "build_your_own_algorithm"}))
    assert cfg.learning_process == CLIPPING and cfg.client_gradient_clip == 1.0 and cfg.engine == "tff"
    changed = recipes.apply({"recipe": "build_your_own_algorithm", "client_gradient_clip": 0.5})
    assert ExperimentConfig.from_mapping(changed).client_gradient_clip == 0.5
