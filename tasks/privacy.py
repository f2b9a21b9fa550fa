"""Differential-privacy accounting for user-level DP-FedAvg (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models").

Each round samples clients with rate q = clients_per_round / num_clients and adds Gaussian noise of
multiplier z to the clipped sum, so T rounds are the T-fold composition of a Poisson-subsampled
Gaussian mechanism. ε at δ comes from ``dp_accounting``: RDP (the figure the TFF DP tutorial quotes)
and PLD (tighter). With uniform fixed-size sampling the Poisson analysis is the usual approximation;
choose ``client_sampling='poisson'`` for the exact setting. Adaptive clipping changes the clip norm,
not ε (its quantile estimate is private within the same noise budget, Andrew et al. 2021).

Used by the resolve step (the budget guard) and by the trainer (ε after every round).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import dp_accounting
from dp_accounting import pld, rdp

from tasks.config import ConfigError, ExperimentConfig


class PrivacyBudgetError(ConfigError):
    """The planned run would spend more privacy budget than configured."""


class CalibrationError(ConfigError):
    """No noise multiplier within bounds reaches the target ε (``dp_target_epsilon``)."""


# The largest noise multiplier calibration tries (the config's own bound on noise_multiplier).
MAX_CALIBRATED_NOISE = 1000.0


def dp_event(noise_multiplier: float, sampling_rate: float, rounds: int) -> dp_accounting.DpEvent:
    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, rounds)


def epsilon_after_rounds(
    *, noise_multiplier: float, sampling_rate: float, rounds: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε after ``rounds`` rounds at ``delta``; ``inf`` without noise. ``accountant``: 'rdp' or 'pld'."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    event = dp_event(noise_multiplier, sampling_rate, rounds)
    if accountant == "rdp":
        # Low fractional orders may not converge at large q; the accountant drops them, and says so per call.
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        absl_log.setLevel(logging.ERROR)
        try:
            return float(rdp.RdpAccountant().compose(event).get_epsilon(delta))
        finally:
            absl_log.setLevel(level)
    if accountant == "pld":
        return float(pld.PLDAccountant().compose(event).get_epsilon(delta))
    raise ValueError(f"accountant must be 'rdp' or 'pld'. Got {accountant!r}.")


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    noise_multiplier: float
    sampling_rate: float
    delta: float
    rounds: int

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> PrivacyPlan:
        population = cfg.num_clients - cfg.heldout_clients  # held-out clients never contribute updates
        delta = cfg.dp_delta if cfg.dp_delta > 0 else default_delta(population)
        return cls(cfg.noise_multiplier, cfg.clients_per_round / population, delta, cfg.rounds)

    def epsilon(self, rounds: int | None = None, accountant: str = "rdp") -> float:
        return epsilon_after_rounds(
            noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate,
            rounds=self.rounds if rounds is None else rounds, delta=self.delta, accountant=accountant,
        )


def default_delta(num_clients: int) -> float:
    """δ = 1 / N^1.1: below 1/N, as user-level DP over N clients needs."""
    return 1.0 / num_clients**1.1


def check_budget(cfg: ExperimentConfig) -> dict[str, float] | None:
    """For a DP run: the planned (ε, δ); raises PrivacyBudgetError, with what would fit, when
    ε exceeds ``dp_epsilon_budget``. None for runs without DP."""
    if cfg.aggregator != "dp":
        return None
    plan = PrivacyPlan.of(cfg)
    epsilon = plan.epsilon()
    if cfg.dp_epsilon_budget > 0 and epsilon > cfg.dp_epsilon_budget:
        rounds_fit = _max_rounds_within(plan, cfg.dp_epsilon_budget)
        z_fit = math.ceil(_min_noise_within(plan, cfg.dp_epsilon_budget) * 1000) / 1000  # shown rounded up
        raise PrivacyBudgetError(
            f"dp_epsilon_budget: {cfg.rounds} rounds with noise_multiplier={cfg.noise_multiplier}, "
            f"q={plan.sampling_rate:.4g} spend ε={epsilon:.3f} at δ={plan.delta:.3g} (RDP), over the budget "
            f"of {cfg.dp_epsilon_budget}. Fix: rounds <= {rounds_fit}, or noise_multiplier >= {z_fit:.3f}, "
            "or fewer clients_per_round, or a larger dp_epsilon_budget."
        )
    return {"epsilon": epsilon, "delta": plan.delta}


def _max_rounds_within(plan: PrivacyPlan, budget: float) -> int:
    low, high = 0, plan.rounds  # plan.epsilon(high) > budget
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if plan.epsilon(mid) <= budget else (low, mid)
    return low


def _min_noise_within(plan: PrivacyPlan, budget: float) -> float:
    low, high = plan.noise_multiplier, max(2 * plan.noise_multiplier, 1.0)
    while dataclasses.replace(plan, noise_multiplier=high).epsilon() > budget:
        low, high = high, 2 * high
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (low, mid) if dataclasses.replace(plan, noise_multiplier=mid).epsilon() <= budget else (mid, high)
    return high


def noise_for_epsilon(*, target_epsilon: float, sampling_rate: float, rounds: int, delta: float,
                      max_noise: float = MAX_CALIBRATED_NOISE) -> float:
    """The smallest noise multiplier (rounded up to 1e-4) whose ε after ``rounds`` Poisson-sampled rounds at
    rate ``sampling_rate`` is <= ``target_epsilon`` at ``delta`` (RDP): bisection on the accountant, as the
    TFF DP tutorial's calibration searches its accountant. ε falls as the noise grows.

    Raises CalibrationError when even ``max_noise`` spends more than the target.
    """
    if target_epsilon <= 0:
        raise CalibrationError(f"dp_target_epsilon must be > 0 to calibrate. Got {target_epsilon}.")

    def epsilon(z: float) -> float:
        return epsilon_after_rounds(noise_multiplier=z, sampling_rate=sampling_rate, rounds=rounds, delta=delta)

    if epsilon(max_noise) > target_epsilon:
        raise CalibrationError(
            f"dp_target_epsilon: no noise multiplier up to {max_noise:g} reaches ε={target_epsilon} at δ={delta:.3g} "
            f"with q={sampling_rate:.4g} over {rounds} rounds (ε={epsilon(max_noise):.3g} at {max_noise:g}). "
            "Fix: a larger dp_target_epsilon, fewer rounds, or fewer clients_per_round.")
    low, high = 0.0, 1.0
    while epsilon(high) > target_epsilon:
        low, high = high, min(2 * high, max_noise)
    while high - low > 5e-5:  # the result is rounded up to 1e-4
        mid = (low + high) / 2
        low, high = (low, mid) if epsilon(mid) <= target_epsilon else (mid, high)
    return math.ceil(high * 1e4) / 1e4


def calibrated(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``noise_multiplier`` computed for ``dp_target_epsilon`` at the run's sampling rate,
    rounds and δ (:func:`noise_for_epsilon`); ``cfg`` itself when calibration is off (target 0).

    Raises CalibrationError when no noise within bounds reaches the target, or when the noise it needs is
    more than adaptive clipping allows with this many clients per round.
    """
    if cfg.dp_target_epsilon <= 0:
        return cfg
    plan = PrivacyPlan.of(cfg)
    noise = noise_for_epsilon(target_epsilon=cfg.dp_target_epsilon, sampling_rate=plan.sampling_rate,
                              rounds=cfg.rounds, delta=plan.delta)
    try:
        return dataclasses.replace(cfg, noise_multiplier=noise)
    except ConfigError as e:
        raise CalibrationError(
            f"dp_target_epsilon={cfg.dp_target_epsilon} needs noise_multiplier={noise:g} at q="
            f"{plan.sampling_rate:.4g}, {cfg.rounds} rounds, δ={plan.delta:.3g}, which this run cannot use: {e} "
            "(The TFF tutorial raises clients per round with the noise, which keeps the noise on the average "
            "update constant.)") from e
