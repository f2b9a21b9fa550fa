"""Model-update aggregators by name: the config's ``aggregator`` -> a ``tff.aggregators`` factory.

The recommended aggregators of TFF's tutorial (tuning_recommended_aggregators), with their settings
exposed: ``robust`` (adaptive zeroing + L2 clipping), ``dp`` (Gaussian mechanism with fixed or adaptive
clipping, McMahan et al. 2018 / Andrew et al. 2021), ``compression`` (uniform quantisation of large
tensors, Suresh et al. 2017) and ``secure`` (``tff.federated_secure_sum_bitwidth``). Built the way
``tff.learning.*_aggregator`` build them; the zeroing/clipping wrappers are TFF 0.87's own (pinned).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning import model_update_aggregator as recommended
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te

from tasks.config import ExperimentConfig
from trainer import hooks, seeded_dp

# Algorithms whose client updates are averaged uniformly even without DP.
UNWEIGHTED_ALGORITHMS = {"fedavg_unweighted"}


class Error(Exception):
    """Base class for aggregator errors."""


class CustomAggregatorError(Error):
    """``custom_aggregator`` cannot be imported or does not return an aggregation factory."""


def wants_weighted(cfg: ExperimentConfig) -> bool:
    """Whether built-in aggregators average by example count. DP needs uniform weighting (a client's
    weight would reveal its example count)."""
    return cfg.aggregator != "dp" and cfg.algorithm not in UNWEIGHTED_ALGORITHMS


def is_weighted(cfg: ExperimentConfig, factory: tff.aggregators.AggregationFactory | None) -> bool:
    """Whether the learning process must be the weighted variant for ``factory``."""
    if factory is None:
        return cfg.algorithm not in UNWEIGHTED_ALGORITHMS
    return isinstance(factory, tff.aggregators.WeightedAggregationFactory)


def load_custom_factory(cfg: ExperimentConfig) -> tff.aggregators.AggregationFactory:
    """Imports ``module:function`` from ``cfg.custom_aggregator`` and calls it with the config."""
    build = hooks.import_function("custom_aggregator", cfg.custom_aggregator, CustomAggregatorError, "config")
    factory = build(cfg)
    if not isinstance(factory, tff.aggregators.AggregationFactory):
        raise CustomAggregatorError(
            f"custom_aggregator {cfg.custom_aggregator!r} must return a tff.aggregators factory. "
            f"Got {type(factory).__name__}."
        )
    return factory


def build_model_aggregator(cfg: ExperimentConfig) -> tff.aggregators.AggregationFactory | None:
    """The factory for ``cfg.aggregator``, with compression composed in when ``cfg.compress`` is set
    (``compression`` is TFF's recipe: robust wrappers around a compressed mean). None: TFF's default."""
    weighted = wants_weighted(cfg)
    if cfg.aggregator == "custom":
        return load_custom_factory(cfg)
    if cfg.aggregator == "secure":
        return tff.learning.secure_aggregator(
            zeroing=cfg.aggregator_zeroing, clipping=cfg.aggregator_clipping, weighted=weighted
        )
    if cfg.aggregator == "dp":
        return _dp_factory(cfg)
    compressed = compresses(cfg)
    if cfg.aggregator == "mean" and not compressed:
        return None
    inner = _compressed_sum(cfg) if compressed else None
    factory = tff.aggregators.MeanFactory(inner) if weighted else tff.aggregators.UnweightedMeanFactory(inner)
    robust = cfg.aggregator in ("robust", "compression")
    if robust and cfg.aggregator_clipping:
        factory = recommended._default_clipping(factory)  # noqa: SLF001 - TFF 0.87's own wrapper (pinned)
    if robust and cfg.aggregator_zeroing:
        factory = recommended._default_zeroing(factory)  # noqa: SLF001
    return factory


def compresses(cfg: ExperimentConfig) -> bool:
    return cfg.aggregator == "compression" or (cfg.compress and cfg.aggregator in ("mean", "robust", "dp"))


def _compressed_sum(cfg: ExperimentConfig) -> tff.aggregators.UnweightedAggregationFactory:
    return tff.aggregators.EncodedSumFactory.quantize_above_threshold(
        quantization_bits=cfg.compression_bits, threshold=cfg.compression_threshold,
        stochastic=cfg.compression_stochastic,
    )


def _dp_factory(cfg: ExperimentConfig) -> tff.aggregators.UnweightedAggregationFactory:
    # TFF's own mechanisms with noise seeded from (seed, round), so resumed runs are exact. With
    # compression, clients send quantised clipped updates; the server adds the noise to their sum.
    inner = _compressed_sum(cfg) if compresses(cfg) else None
    factory = (
        seeded_dp.seeded_gaussian_adaptive(
            cfg.noise_multiplier, float(cfg.clients_per_round), initial_l2_norm_clip=cfg.dp_clip,
            target_unclipped_quantile=cfg.dp_target_unclipped_quantile, seed=cfg.seed,
            record_aggregation_factory=inner,
        )
        if cfg.dp_clipping == "adaptive"
        else seeded_dp.seeded_gaussian_fixed(
            cfg.noise_multiplier, float(cfg.clients_per_round), cfg.dp_clip, seed=cfg.seed,
            record_aggregation_factory=inner,
        )
    )
    return recommended._default_zeroing(factory) if cfg.aggregator_zeroing else factory  # noqa: SLF001


def update_bits(cfg: ExperimentConfig, shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """(bits one client's update takes as the aggregator encodes it, bits as plain float32).

    For ``compression`` each tensor is really encoded (quantised and bit-packed, plus its min/max),
    and the encoded tensors are measured: the packing wastes bits, so this is not ``bits/32``.
    """
    float_bits = sum(int(np.prod(s)) * 32 for s in shapes)
    if not compresses(cfg):
        return float_bits, float_bits
    encoded_bits = 0
    for shape in shapes:
        size = int(np.prod(shape))
        if size <= cfg.compression_threshold:
            encoded_bits += size * 32
            continue
        encoder = te.core.SimpleEncoder(te.encoders.uniform_quantization(cfg.compression_bits),
                                        tf.TensorSpec(shape, tf.float32))
        encoded, _ = encoder.encode(tf.random.stateless_uniform(shape, seed=[0, 0]))
        encoded_bits += sum(int(np.prod(t.shape)) * t.dtype.size * 8 for t in tf.nest.flatten(encoded))
    return encoded_bits, float_bits
