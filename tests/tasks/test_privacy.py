"""ε accounting and the privacy-budget guard."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from tasks import privacy, steps
from tasks.config import ConfigError, ExperimentConfig

DP = {"aggregator": "dp", "algorithm": "fedavg_unweighted", "num_clients": 100, "clients_per_round": 20,
      "noise_multiplier": 1.0, "rounds": 50, "rounds_per_chunk": 10}


def test_the_tff_dp_tutorial_setting_gives_its_rdp_epsilon():
    eps = privacy.epsilon_after_rounds(noise_multiplier=1.2, sampling_rate=120 / 3383, rounds=100, delta=1e-5)
    assert eps == pytest.approx(1.99, abs=0.01)


@pytest.mark.parametrize(("q", "z", "rounds", "delta"), [(0.01, 1.1, 500, 1e-6), (0.1, 0.8, 30, 1e-5),
                                                          (0.5, 2.0, 10, 1e-3)])
def test_epsilon_equals_an_independent_dp_accounting_computation(q, z, rounds, delta):
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    want_rdp = rdp.RdpAccountant().compose(event, rounds).get_epsilon(delta)
    want_pld = pld.PLDAccountant().compose(event, rounds).get_epsilon(delta)
    kwargs = {"noise_multiplier": z, "sampling_rate": q, "rounds": rounds, "delta": delta}
    assert privacy.epsilon_after_rounds(**kwargs) == pytest.approx(want_rdp, rel=1e-9)
    assert privacy.epsilon_after_rounds(**kwargs, accountant="pld") == pytest.approx(want_pld, rel=1e-6)
    assert want_pld <= want_rdp  # PLD is the tighter analysis


def test_epsilon_grows_with_rounds_and_is_infinite_without_noise():
    values = [privacy.epsilon_after_rounds(noise_multiplier=1.0, sampling_rate=0.1, rounds=t, delta=1e-5)
              for t in (0, 1, 10, 100)]
    assert values[0] == 0 and values == sorted(values) and len(set(values)) == 4
    assert math.isinf(privacy.epsilon_after_rounds(noise_multiplier=0, sampling_rate=0.1, rounds=1, delta=1e-5))


def test_the_budget_guard_passes_a_run_within_budget_and_reports_its_epsilon():
    planned = privacy.check_budget(ExperimentConfig(**DP, dp_epsilon_budget=100))
    assert planned["delta"] == pytest.approx(1 / 100**1.1)
    assert 0 < planned["epsilon"] < 100
    assert privacy.check_budget(ExperimentConfig()) is None  # no DP, nothing to guard


def test_an_over_budget_run_is_refused_with_the_rounds_and_noise_that_would_fit():
    cfg = ExperimentConfig(**DP, dp_epsilon_budget=3.0)
    with pytest.raises(privacy.PrivacyBudgetError, match=r"dp_epsilon_budget: 50 rounds .* Fix: rounds <= (\d+)") as e:
        privacy.check_budget(cfg)
    plan = privacy.PrivacyPlan.of(cfg)
    rounds_fit = int(e.value.args[0].split("rounds <= ")[1].split(",")[0])
    assert plan.epsilon(rounds_fit) <= 3.0 < plan.epsilon(rounds_fit + 1)
    z_fit = float(e.value.args[0].split("noise_multiplier >= ")[1].split(",")[0])
    assert privacy.PrivacyPlan(z_fit, plan.sampling_rate, plan.delta, 50).epsilon() <= 3.0


def test_a_zero_budget_means_no_limit():
    assert privacy.check_budget(ExperimentConfig(**{**DP, "noise_multiplier": 0.3}, dp_epsilon_budget=0))


def test_dp_needs_uniform_weighting_and_enough_clients_for_adaptive_clipping():
    with pytest.raises(ConfigError, match="fedsgd"):
        ExperimentConfig(**{**DP, "algorithm": "fedsgd"})
    with pytest.raises(ConfigError, match=r"noise_multiplier must be < 0.1 x clients_per_round.*clients_per_round >= 11"):
        ExperimentConfig(**{**DP, "clients_per_round": 10})
    ExperimentConfig(**{**DP, "clients_per_round": 10, "dp_clipping": "fixed"})  # fixed clipping has no such rule


def test_resolve_refuses_an_over_budget_run_before_writing_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FEDFLOW_MLRUNS_DIR", str(tmp_path / "mlruns"))
    with pytest.raises(privacy.PrivacyBudgetError):
        steps.resolve({**DP, "dp_epsilon_budget": 1.0}, dag_id="tests", run_id="over-budget")
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlruns").exists()
