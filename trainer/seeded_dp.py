"""DP aggregation whose Gaussian noise is a function of (experiment seed, round): reproducible.

TFF's ``DifferentiallyPrivateFactory.gaussian_fixed/gaussian_adaptive`` draw noise with unseeded
``tf.random`` ops, so a resumed DP run cannot equal an uninterrupted one. These queries are the same
mechanisms (tensorflow_privacy's Gaussian sum query, quantile-adaptive clipping of Andrew et al. 2021,
normalised by the expected clients per round, exactly as TFF 0.87 composes them) with the noise drawn by
``tf.random.stateless_normal`` from a seed kept in the aggregator state. The state is checkpointed with
the rest, so chunked, resumed and one-go runs add the same noise. Each round advances the seed; the
value noise and the clipped-count noise use separate streams.

The noise is only as unpredictable as the experiment seed: fine for simulation and research, not for
a production deployment where the server must not know the noise.
"""

from __future__ import annotations

import collections

import dp_accounting
import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_federated.python.aggregators.differential_privacy import adaptive_clip_noise_params
from tensorflow_privacy.privacy.dp_query import normalized_query, quantile_estimator_query

VALUE_STREAM, COUNT_STREAM = 1, 2


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
    """``GaussianSumQuery`` with stateless noise seeded from its global state."""

    _GlobalState = collections.namedtuple("_GlobalState", ["l2_norm_clip", "stddev", "noise_seed"])

    def __init__(self, l2_norm_clip: float, stddev: float, *, seed: int, stream: int) -> None:
        super().__init__(l2_norm_clip, stddev)
        self._initial_seed = (seed, stream)

    def make_global_state(self, l2_norm_clip, stddev, noise_seed=None):
        if noise_seed is None:
            noise_seed = tf.constant([self._initial_seed[0], self._initial_seed[1] << 40], tf.int64)
        return self._GlobalState(tf.cast(l2_norm_clip, tf.float32), tf.cast(stddev, tf.float32), noise_seed)

    def initial_global_state(self):
        return self.make_global_state(self._l2_norm_clip, self._stddev)

    def get_noised_result(self, sample_state, global_state):
        leaves = tf.nest.flatten(sample_state)
        noised = [
            v + tf.cast(
                tf.random.stateless_normal(
                    tf.shape(v), seed=global_state.noise_seed + tf.constant([0, i], tf.int64),
                    stddev=global_state.stddev,
                ),
                v.dtype,
            )
            for i, v in enumerate(leaves)
        ]
        advanced = global_state._replace(
            noise_seed=global_state.noise_seed + tf.constant([0, len(leaves)], tf.int64)
        )
        event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
        return tf.nest.pack_sequence_as(sample_state, noised), advanced, event


class _SeededQuantileEstimatorQuery(quantile_estimator_query.QuantileEstimatorQuery):
    def __init__(self, *args, seed: int, **kwargs) -> None:
        self._noise_seed = seed  # read by _construct_below_estimate_query during super().__init__
        super().__init__(*args, **kwargs)

    def _construct_below_estimate_query(self, below_estimate_stddev, expected_num_records):
        return normalized_query.NormalizedQuery(
            SeededGaussianSumQuery(0.5, below_estimate_stddev, seed=self._noise_seed, stream=COUNT_STREAM),
            denominator=expected_num_records,
        )


class SeededQuantileAdaptiveClipSumQuery(tfp.QuantileAdaptiveClipSumQuery):
    """Quantile-adaptive clipping with both noise sources seeded (see module docstring)."""

    def __init__(self, initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile, learning_rate,
                 clipped_count_stddev, expected_num_records, geometric_update, *, seed: int) -> None:
        super().__init__(initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile, learning_rate,
                         clipped_count_stddev, expected_num_records, geometric_update)
        self._quantile_estimator_query = _SeededQuantileEstimatorQuery(
            initial_l2_norm_clip, target_unclipped_quantile, learning_rate, clipped_count_stddev,
            expected_num_records, geometric_update, seed=seed,
        )
        self._sum_query = SeededGaussianSumQuery(
            initial_l2_norm_clip, noise_multiplier * initial_l2_norm_clip, seed=seed, stream=VALUE_STREAM
        )

    def get_noised_result(self, sample_state, global_state):
        # As the parent's, but the new sum-query state keeps the advanced noise seed.
        noised_vectors, sum_state, sum_event = self._sum_query.get_noised_result(
            sample_state.sum_state, global_state.sum_state
        )
        new_clip, new_estimator_state, quantile_event = self._quantile_estimator_query.get_noised_result(
            sample_state.quantile_estimator_state, global_state.quantile_estimator_state
        )
        new_clip = tf.maximum(new_clip, 0.0)
        new_sum_state = self._sum_query.make_global_state(
            l2_norm_clip=new_clip, stddev=new_clip * global_state.noise_multiplier, noise_seed=sum_state.noise_seed
        )
        new_global_state = self._GlobalState(global_state.noise_multiplier, new_sum_state, new_estimator_state)
        return noised_vectors, new_global_state, dp_accounting.ComposedDpEvent(events=[sum_event, quantile_event])


def seeded_gaussian_fixed(noise_multiplier: float, clients_per_round: float, clip: float, *, seed: int,
                          record_aggregation_factory=None):
    """As ``DifferentiallyPrivateFactory.gaussian_fixed``, with seeded noise."""
    query = SeededGaussianSumQuery(clip, clip * noise_multiplier, seed=seed, stream=VALUE_STREAM)
    return tff.aggregators.DifferentiallyPrivateFactory(
        normalized_query.NormalizedQuery(query, denominator=clients_per_round), record_aggregation_factory
    )


def seeded_gaussian_adaptive(noise_multiplier: float, clients_per_round: float, *, initial_l2_norm_clip: float,
                             target_unclipped_quantile: float, seed: int, learning_rate: float = 0.2,
                             record_aggregation_factory=None):
    """As ``DifferentiallyPrivateFactory.gaussian_adaptive`` (same noise split), with seeded noise."""
    value_noise_multiplier, clipped_count_stddev = adaptive_clip_noise_params(noise_multiplier, clients_per_round)
    query = SeededQuantileAdaptiveClipSumQuery(
        initial_l2_norm_clip, value_noise_multiplier, target_unclipped_quantile, learning_rate,
        clipped_count_stddev, clients_per_round, True, seed=seed,
    )
    return tff.aggregators.DifferentiallyPrivateFactory(
        normalized_query.NormalizedQuery(query, denominator=clients_per_round), record_aggregation_factory
    )
