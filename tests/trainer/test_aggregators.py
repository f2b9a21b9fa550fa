"""Each recommended aggregator trains and reports what it did: ε, bits, clip norms."""

from __future__ import annotations

import math

import pytest

from tasks import metrics_log, privacy
from tasks.config import ExperimentConfig
from trainer import aggregators, program

# The MLP on 8x8 inputs: Dense 64->128 (kernel 8,192 values), bias 128, Dense 128->4 (512), bias 4.
MLP_SHAPES = [(64, 128), (128,), (128, 4), (4,)]


@pytest.mark.parametrize("aggregator", ["robust", "secure", "compression"])
def test_robust_secure_and_compression_aggregators_train_and_report_measurements(make_run, aggregator):
    run = make_run(aggregator=aggregator, client_learning_rate=0.2, compression_threshold=1000)
    program.train_until_round(run.root, 3)
    rows = metrics_log.read_rows(run.metrics)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    measured = {k for k in rows[-1] if k.startswith("aggregator/")}
    assert measured, f"no aggregator measurements in {sorted(rows[-1])}"
    if aggregator != "compression":
        assert rows[-1]["compression_ratio"] == 1.0


def test_dp_rounds_report_the_accountant_epsilon_and_the_adaptive_clip(make_run):
    run = make_run(aggregator="dp", algorithm="fedavg_unweighted", clients_per_round=6, noise_multiplier=0.3,
                   dp_clip=1.0, dp_epsilon_budget=0, eval_every=3, client_learning_rate=0.2)
    program.train_until_round(run.root, 3)
    rows = metrics_log.read_rows(run.metrics)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # small noise: it still learns (noise is seeded)
    plan = privacy.PrivacyPlan.of(ExperimentConfig.read_json(run.config))
    for row in rows:
        assert row["epsilon"] == pytest.approx(plan.epsilon(row["round"]))
        assert row["delta"] == pytest.approx(1 / 6**1.1)
    assert rows[0]["epsilon"] < rows[1]["epsilon"] < rows[2]["epsilon"]
    assert rows[2]["epsilon_pld"] <= rows[2]["epsilon"]
    assert any("clip" in k for k in rows[-1] if k.startswith("aggregator/")), sorted(rows[-1])


def packed_bits(n: int, bits: int) -> int:
    """TFF's bit-packing puts 28 payload bits in each int32, plus the tensor's min and max (2 float32)."""
    return math.ceil(n * bits / 28) * 32 + 64


@pytest.mark.parametrize(("bits", "threshold"), [(8, 1000), (4, 100), (8, 20000)])
def test_compression_bits_match_a_hand_computation_from_tensor_sizes(bits, threshold):
    cfg = ExperimentConfig(aggregator="compression", compression_bits=bits, compression_threshold=threshold)
    encoded, float32 = aggregators.update_bits(cfg, MLP_SHAPES)
    sizes = [64 * 128, 128, 128 * 4, 4]
    assert float32 == 32 * sum(sizes)
    assert encoded == sum(packed_bits(n, bits) if n > threshold else 32 * n for n in sizes)


def test_eight_bit_quantisation_of_every_large_tensor_approaches_the_packing_limit():
    # 32 / (8 * 32 / 28) = 3.5: TFF's packing, not the naive 4x, is the real limit.
    cfg = ExperimentConfig(aggregator="compression", compression_bits=8, compression_threshold=0)
    encoded, float32 = aggregators.update_bits(cfg, [(1000, 1000)])
    assert float32 / encoded == pytest.approx(3.5, rel=1e-3)


def test_a_user_factory_plugs_in_through_the_custom_aggregator_hook(make_run):
    run = make_run(aggregator="custom", custom_aggregator="tests.trainer.custom_factories:clipped_mean")
    program.train_until_round(run.root, 2)
    last = metrics_log.read_rows(run.metrics)[-1]
    assert any("clipping" in k for k in last), sorted(last)


@pytest.mark.parametrize(("target", "message"), [
    ("tests.trainer.custom_factories:not_a_factory", "must return a tff.aggregators factory. Got int"),
    ("tests.trainer.no_such_module:build", "cannot be imported in the TFF environment"),
])
def test_a_broken_custom_aggregator_is_reported_with_the_fix(target, message):
    cfg = ExperimentConfig(aggregator="custom", custom_aggregator=target)
    with pytest.raises(aggregators.CustomAggregatorError, match=message):
        aggregators.build_model_aggregator(cfg)


def test_the_trainer_and_the_budget_guard_use_the_same_accountant():
    import importlib.metadata

    # Pinned to one version in both environments (requirements/tff-overrides.txt): same ε to the digit.
    assert importlib.metadata.version("dp-accounting") == "0.6.0"
    eps = privacy.epsilon_after_rounds(noise_multiplier=0.7, sampling_rate=12 / 17, rounds=4, delta=1 / 17**1.1)
    assert eps == pytest.approx(7.39301, abs=1e-5)  # the Airflow side's planned ε for the same setting


def test_compression_composes_with_dp_clients_send_quantised_clipped_updates(make_run):
    run = make_run(aggregator="dp", algorithm="fedavg_unweighted", clients_per_round=6, noise_multiplier=0.5,
                   dp_epsilon_budget=0, compress=True, compression_threshold=1000)
    program.train_until_round(run.root, 2)
    last = metrics_log.read_rows(run.metrics)[-1]
    assert last["compression_ratio"] > 2 and last["epsilon"] > 0
    assert last["bits_sent"] == aggregators.update_bits(ExperimentConfig.read_json(run.config), MLP_SHAPES)[0] * 6


def test_compression_does_not_compose_with_secure_or_custom_aggregators():
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match="compress composes with the mean, robust and dp aggregators"):
        ExperimentConfig(aggregator="secure", compress=True)
