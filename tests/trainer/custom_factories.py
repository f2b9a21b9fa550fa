"""User-style aggregator factories for the custom-aggregator hook (aggregator='custom')."""

import tensorflow_federated as tff


def clipped_mean(cfg):  # noqa: ARG001 - the hook passes the config
    return tff.aggregators.clipping_factory(clipping_norm=0.5, inner_agg_factory=tff.aggregators.MeanFactory())


def not_a_factory(cfg):  # noqa: ARG001
    return 42
