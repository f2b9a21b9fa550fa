"""The simulations_with_accelerators recipe: the tutorial's VGG-like CNNs and TFF's concurrency setting."""

from __future__ import annotations

import pytest
import tensorflow_federated as tff
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl

from tasks import metrics_log
from tasks.config import ConfigError, ExperimentConfig
from trainer import models, program, recipe_results


@pytest.mark.parametrize(("name", "parameters"), [("vgg_small", 2_731_082), ("vgg_large", 5_827_658)])
def test_the_tutorials_vgg_like_cnns_have_its_parameter_counts_whatever_the_input_size(name, parameters):
    for shape in ((8, 8, 1), (28, 28, 1)):
        model = models.build_keras_model(name, shape, 10)
        assert model.count_params() == parameters
        assert model.output_shape == (None, 10)


def test_accelerators_recipe_one_round_of_the_small_vgg_under_a_concurrency_limit(make_run):
    run = make_run(
        "accelerators",
        recipe="accelerators",
        model="vgg_small",
        clients_per_round=2,
        batch_size=8,
        client_learning_rate=0.01,
        rounds=2,
        rounds_per_chunk=2,
        max_concurrent_computation_calls=2,
    )
    before = context_stack_impl.context_stack.current
    try:
        exp = program.load_experiment(run.root)
        assert context_stack_impl.context_stack.current is not before  # the limited C++ context is in place
        program._train(exp, 1)  # one round on this experiment: no second trace of the VGG, no SavedModel export
        results = recipe_results.MEASUREMENTS["accelerators"](exp)
    finally:  # later tests in this session get TFF's default context back
        tff.backends.native.set_sync_local_cpp_execution_context()
    assert results["vgg_small_parameters"] == results["vgg_small_parameters_28x28"] == 2_731_082
    assert results["vgg_large_parameters"] == results["vgg_large_parameters_28x28"] == 5_827_658
    (row,) = metrics_log.read_rows(run.metrics)
    assert results["seconds_per_round"] == row["round_seconds"] > 0 and results["rounds_timed"] == 1
    assert results["max_concurrent_computation_calls"] == 2 and results["clients_per_round"] == 2


def test_a_concurrency_limit_with_the_secure_aggregator_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"aggregator 'secure' runs in TFF's test runtime.*Fix: "):
        ExperimentConfig(aggregator="secure", max_concurrent_computation_calls=2)
    with pytest.raises(ConfigError, match=r"max_concurrent_computation_calls must be >= 0"):
        ExperimentConfig(max_concurrent_computation_calls=-1)
