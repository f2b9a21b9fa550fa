"""The jax engine computes what TFF computes: one round from the same state equals the tff engine's and the
hybrid's (float32 round-off) on the logistic-regression model and the MLP; a resumed run equals an
uninterrupted one; the jax_support tutorial's computations trace to its types, and TFF 0.87 refuses to
execute them with the documented INVALID_ARGUMENT."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("jax")

from tasks import metrics_log  # noqa: E402 - after the importorskip
from tests.trainer.conftest import checkpoint  # noqa: E402
from tests.trainer.test_hybrid import max_abs_difference, run_config, staged  # noqa: E402, F401 - staged: fixture
from trainer import devices, hybrid, jax_engine, jax_tutorial, program  # noqa: E402

# Measured here: 0 - 6e-8 between engines after one round (float32 sums in another order).
ROUND_TOLERANCE = 1e-6


def one_round_three_engines(run) -> dict:
    """Round 1 from the same seeded round-0 state on the tff, hybrid and jax engines: {engine: (state, metrics)}."""
    exp = program.load_experiment(run.root)
    state = program.initial_state(exp)
    ids = exp.manifest.client_ids("train")
    clients = {cid: program.read_client(exp, "train", cid) for cid in ids}
    index = {cid: i for i, cid in enumerate(ids)}
    results = {}
    for engine in ("tff", "hybrid", "jax"):
        runner = program.RoundRunner(exp, engine, clients, index, ids)
        try:
            results[engine] = runner.next(state, 1, 1)
        finally:
            runner.close()
    assert isinstance(runner.hybrid, jax_engine.JaxEngine) and not runner.hybrid.in_graph_mean
    return results


PARITY_CASES = {
    "logistic_regression": {"model": "softmax"},
    "mlp_fedadam_robust": {
        "model": "mlp",
        "algorithm": "fedadam",
        "server_learning_rate": 0.05,
        "aggregator": "robust",
    },
    "softmax_unweighted": {"model": "softmax", "algorithm": "fedavg_unweighted"},
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_one_jax_round_equals_the_tff_and_hybrid_rounds(make_run, case):
    run = make_run(case, **run_config(engine="jax", **PARITY_CASES[case]))
    results = one_round_three_engines(run)
    (tff_state, _), (jax_state, jax_metrics) = results["tff"], results["jax"]
    start = program.initial_state(program.load_experiment(run.root))
    moved = max_abs_difference(start.global_model_weights, tff_state.global_model_weights)
    assert moved > 1e-3  # the round really trained
    for other in ("tff", "hybrid"):
        other_state, other_metrics = results[other]
        assert max_abs_difference(other_state, jax_state) <= ROUND_TOLERANCE, other  # weights, optimizer, clip ...
        other_row, jax_row = program.round_metrics(other_metrics), program.round_metrics(jax_metrics)
        assert other_row.keys() == jax_row.keys()
        for key, value in other_row.items():
            assert jax_row[key] == pytest.approx(value, rel=1e-6, abs=1e-6), (other, key)


def test_a_resumed_jax_run_equals_an_uninterrupted_one(make_run):
    common = run_config(engine="jax", model="softmax", rounds=4, rounds_per_chunk=4, client_sampling="poisson")
    one_go, chunked = make_run("one_go", **common), make_run("chunked", **common)
    program.train_until_round(one_go.root, 4)
    program.train_until_round(chunked.root, 2)
    program.train_until_round(chunked.root, 4)
    for a, b in zip(checkpoint(one_go).leaves, checkpoint(chunked).leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    rows = metrics_log.read_rows(chunked.metrics)
    assert [r["engine"] for r in rows] == ["jax"] * 4
    untimed = [
        [{**r, "round_seconds": 0, "wall_time": 0} for r in metrics_log.read_rows(run.metrics)]
        for run in (one_go, chunked)
    ]
    assert untimed[0] == untimed[1]
    assert (one_go.model / "MLmodel").exists()
    assert devices.record_environment(one_go, "jax")["train_device"].startswith("jax cpu")


def test_the_jax_engine_refuses_a_model_it_cannot_train(make_run):
    exp = program.load_experiment(make_run("cnn", **run_config(model="cnn")).root)
    with pytest.raises(jax_engine.Error, match="Flatten/Dense") as error:
        jax_engine.JaxEngine(dataclasses.replace(exp.cfg, model="mlp"), exp.model_fn, exp.process)
    assert "Fix: engine='hybrid'" in str(error.value)
    assert issubclass(jax_engine.JaxEngine, hybrid.HybridEngine)


def test_the_tutorials_computations_trace_to_its_types():
    computations = jax_tutorial.tutorial_computations(**jax_tutorial.TUTORIAL_SHAPE)
    model = "<weights=float32[784,10],bias=float32[10]>"
    batch = "<pixels=float32[50,784],labels=int32[50]>"
    assert str(computations["add_numbers"].type_signature) == "(<x=int32,y=int32> -> int32)"
    assert str(computations["train_on_one_batch"].type_signature) == f"(<model={model},batch={batch}> -> {model})"
    assert str(computations["train_on_one_client"].type_signature) == f"(<model={model},batches={batch}*> -> {model})"
    assert str(computations["train_one_round"].type_signature) == (
        f"(<model={model}@SERVER,federated_data={{{batch}*}}@CLIENTS> -> {model}@SERVER)"
    )


def test_tff_refuses_to_execute_a_jax_computation_with_the_documented_error():
    add_numbers = jax_tutorial.tutorial_computations(batch=2, features=3, classes=2)["add_numbers"]
    attempt = jax_tutorial.execution_attempt(add_numbers, 2, 3)
    assert attempt["status"] == "INVALID_ARGUMENT"
    assert attempt["details"] == (
        "`TensorFlowExecutor::CreateValueComputation` can only create values for "
        "computations and intrinsics. Found computation of type 12"
    )


def test_the_tutorials_loss_is_ln10_at_the_zero_model_and_one_step_lowers_it():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (120, 64)).astype(np.float32), rng.integers(0, 10, 120)
    identities = jax_tutorial.loss_identities(x, y, 10)
    assert identities["initial_loss"] == pytest.approx(np.log(10), abs=1e-6)
    assert identities["one_batch_loss_after"] < identities["one_batch_loss_before"]
