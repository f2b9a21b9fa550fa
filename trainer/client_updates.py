"""The clients' model updates as the aggregator receives them: a corruption fault and their norms.

The robustness claims of TFF's tuning_recommended_aggregators tutorial need both: *zeroing* must catch a
client whose update is corrupted (here scaled by ``corrupt_update_scale``, e.g. 1e4), and *adaptive
clipping* must track a quantile of the clients' update norms (Andrew et al. 2021, "Differentially Private
Learning with Adaptive Clipping"). The hybrid engine holds every client's update in Python between its
client work and TFF's aggregation process, so it applies the fault there and measures the norms there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tasks.config import ExperimentConfig

# The target quantile of TFF 0.87's default adaptive clipping (``model_update_aggregator._default_clipping``:
# ``PrivateQuantileEstimationProcess.no_noise(initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2)``),
# used by the robust, compression and secure aggregators.
ROBUST_CLIP_QUANTILE = 0.8


def update_scales(cfg: ExperimentConfig, round_num: int, num_sampled: int) -> np.ndarray | None:
    """The factor each of a round's ``num_sampled`` clients' updates is multiplied by: ``corrupt_update_scale``
    for ``corrupt_clients`` of them, drawn from (seed, round) so a resumed run corrupts the same clients;
    1 for the others. None when the fault is off."""
    if not cfg.corrupt_clients:
        return None
    scales = np.ones(num_sampled, np.float32)
    rng = np.random.default_rng([cfg.seed, round_num, 3])
    corrupted = rng.choice(num_sampled, size=min(cfg.corrupt_clients, num_sampled), replace=False)
    scales[corrupted] = cfg.corrupt_update_scale
    return scales


def clip_target_quantile(cfg: ExperimentConfig) -> float:
    """The quantile of update norms the aggregator's adaptive clip aims at: DP's
    ``dp_target_unclipped_quantile``, else TFF's default clipping target (also reported for aggregators
    without clipping, as the robust aggregator's clip would track it)."""
    if cfg.aggregator == "dp" and cfg.dp_clipping == "adaptive":
        return cfg.dp_target_unclipped_quantile
    return ROBUST_CLIP_QUANTILE


def norm_measurements(per_client: Sequence[Sequence[np.ndarray]], quantile: float) -> dict[str, float]:
    """Per round: the empirical ``quantile`` of the clients' global L2 update norms (what adaptive clipping
    estimates), their median and maximum. Empty for a round without clients."""
    norms = np.array(
        [np.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in update)) for update in per_client]
    )
    if not len(norms):
        return {}
    return {
        "update_norm_quantile": float(np.quantile(norms, quantile)),
        "update_norm_quantile_level": quantile,
        "update_norm_median": float(np.median(norms)),
        "update_norm_max": float(norms.max()),
    }


def clipped_fractions(row: dict, num_clients: int) -> dict[str, float]:
    """``<prefix>/clipped_fraction`` and ``<prefix>/zeroed_fraction`` for every clipped or zeroed count TFF's
    aggregator reported in a metrics row (``aggregator/.../clipped_count`` over the round's clients)."""
    if not num_clients:
        return {}
    fractions = {}
    for key, value in row.items():
        for kind in ("clipped", "zeroed"):
            if key.startswith("aggregator/") and key.endswith(f"{kind}_count"):
                fractions[f"{key.removesuffix(f'{kind}_count')}{kind}_fraction"] = float(value) / num_clients
    return fractions
