"""Calibration of the DP noise for a target ε (``dp_target_epsilon``), the server momentum setting, and the
differential_privacy recipe's points: ε as the accountant computes it, errors that name the fix."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tasks import privacy, recipes, sweep
from tasks.config import ConfigError, ExperimentConfig

DP = {
    "num_clients": 100,
    "clients_per_round": 15,
    "client_sampling": "poisson",
    "aggregator": "dp",
    "rounds": 50,
    "rounds_per_chunk": 50,
    "dp_epsilon_budget": 0,
}


def test_the_calibrated_noise_reaches_the_target_epsilon_within_tolerance():
    cfg = privacy.calibrated(ExperimentConfig(**DP, dp_target_epsilon=4.0))
    plan = privacy.PrivacyPlan.of(cfg)
    assert plan.sampling_rate == 0.15 and plan.rounds == 50
    assert 3.95 <= plan.epsilon() <= 4.0  # at or under the target, and not by much
    assert dataclasses.replace(plan, noise_multiplier=cfg.noise_multiplier - 1e-3).epsilon() > 4.0  # the smallest


def test_a_tighter_target_needs_more_noise():
    loose, tight = (
        privacy.noise_for_epsilon(target_epsilon=e, sampling_rate=0.15, rounds=10, delta=1e-3) for e in (4, 2)
    )
    assert tight > loose


def test_calibration_off_leaves_the_config_as_it_is():
    cfg = ExperimentConfig(**DP, noise_multiplier=0.5)
    assert privacy.calibrated(cfg) is cfg


def test_a_target_no_noise_within_bounds_reaches_is_refused_with_the_fix():
    with pytest.raises(
        privacy.CalibrationError,
        match=r"no noise multiplier up to 2 reaches ε=0.01 .*Fix: a larger "
        r"dp_target_epsilon",
    ):
        privacy.noise_for_epsilon(target_epsilon=0.01, sampling_rate=0.5, rounds=100, delta=1e-5, max_noise=2.0)


def test_noise_more_than_adaptive_clipping_allows_is_refused_naming_clients_per_round():
    cfg = ExperimentConfig(**{**DP, "clients_per_round": 11}, dp_target_epsilon=1.0)
    with pytest.raises(privacy.CalibrationError) as e:
        privacy.calibrated(cfg)
    assert "dp_target_epsilon=1.0 needs noise_multiplier=" in str(e.value)
    assert "noise_multiplier must be < 0.1 x clients_per_round" in str(e.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"dp_target_epsilon": 4.0}, "dp_target_epsilon calibrates the DP aggregator's noise. Got aggregator='mean'"),
        ({"algorithm": "fedadam", "server_momentum": 0.9}, "fedadam is an adaptive optimizer"),
        ({"server_momentum": 1.0}, "server_momentum must be >= 0 and <= 0.999"),
        ({"server_momentum": -0.1}, "server_momentum must be >= 0"),
        ({"dp_target_epsilon": -1.0}, "dp_target_epsilon must be >= 0"),
    ],
    ids=["target-without-dp", "momentum-adaptive", "momentum-one", "momentum-negative", "negative-target"],
)
def test_bad_momentum_and_calibration_settings_are_refused(settings, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        ExperimentConfig(**settings)


def test_server_momentum_is_accepted_with_server_sgd():
    assert ExperimentConfig(algorithm="fedavg_unweighted", server_momentum=0.9).server_momentum == 0.9


def test_the_differential_privacy_recipe_sweeps_noise_and_one_calibrated_point():
    points = sweep.from_recipe(recipes.load("differential_privacy"), "default").points()
    assert [p["label"] for p in points] == [
        "noise_multiplier=0.0",
        "noise_multiplier=0.5",
        "noise_multiplier=0.75",
        "noise_multiplier=1.0",
        "dp_target_epsilon=4.0",
    ]
    configs = [privacy.calibrated(ExperimentConfig.from_mapping(p["params"])) for p in points]
    epsilons = [privacy.PrivacyPlan.of(c).epsilon() for c in configs]
    assert math.isinf(epsilons[0]) and epsilons[1] > epsilons[2] > epsilons[3] > epsilons[4]  # more noise, less ε
    assert configs[4].client_sampling == "poisson" and privacy.PrivacyPlan.of(configs[4]).sampling_rate == 0.15


def test_a_sweep_point_whose_target_cannot_be_calibrated_fails_the_plan_up_front(tmp_path):
    path = tmp_path / "calibrate.yaml"
    path.write_text(
        "description: x\nschedule: null\nbase: {num_clients: 100, clients_per_round: 11, aggregator: dp, "
        "rounds: 50, rounds_per_chunk: 50, dp_epsilon_budget: 0}\n"
        "cases: [{noise_multiplier: 0.5}, {dp_target_epsilon: 1.0}]\n"
    )
    spec = sweep.load(path)
    with pytest.raises(
        sweep.SweepFileError,
        match=r"grid point p01 \(dp_target_epsilon=1.0\): dp_target_epsilon=1.0 "
        r"needs noise_multiplier=",
    ):
        sweep.check_privacy_budgets(spec, spec.points())
