"""The custom_aggregators tutorial's aggregation factory, as a user would plug one in.

``ExampleTaskFactory`` is the tutorial's last version: each client scales its value by a factor, an inner
aggregation (a plain sum by default) sums the scaled values, the server unscales; the state counts the
rounds and the measurements report the scaled sum. As the sum inside ``MeanFactory`` it gives the same
mean as TFF's own: the recipe ``custom_aggregators`` trains FedAvg with it and checks the weights equal
plain-mean FedAvg's.

    aggregator: custom
    custom_aggregator: trainer.tutorial_aggregators:scaled_mean
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff


class ExampleTaskFactory(tff.aggregators.UnweightedAggregationFactory):
    """Scale on the clients, sum (``inner_factory``), unscale on the server; state = rounds so far."""

    def __init__(self, inner_factory: tff.aggregators.UnweightedAggregationFactory | None = None,
                 scaling_factor: float = 100.0) -> None:
        self._inner_factory = inner_factory or tff.aggregators.SumFactory()
        self._scaling_factor = scaling_factor

    def create(self, value_type) -> tff.templates.AggregationProcess:
        inner_process = self._inner_factory.create(value_type)
        factor = self._scaling_factor

        @tff.federated_computation()
        def initialize_fn():
            my_state = tff.federated_value(0, tff.SERVER)
            inner_state = inner_process.initialize()
            return tff.federated_zip((my_state, inner_state))

        @tff.tensorflow.computation(value_type)
        def scale(value):
            return tf.nest.map_structure(lambda x: x * factor, value)

        @tff.tensorflow.computation(inner_process.next.type_signature.result.result.member)
        def unscale(value):
            return tf.nest.map_structure(lambda x: x / factor, value)

        @tff.tensorflow.computation(np.int32)
        def add_one(value):
            return value + 1

        @tff.federated_computation(initialize_fn.type_signature.result, tff.FederatedType(value_type, tff.CLIENTS))
        def next_fn(state, value):
            state, inner_state = state
            state = tff.federated_map(add_one, state)
            scaled_value = tff.federated_map(scale, value)
            inner_output = inner_process.next(inner_state, scaled_value)
            summed_value = inner_output.result
            unscaled_value = tff.federated_map(unscale, summed_value)
            new_state = tff.federated_zip((state, inner_output.state))
            measurements = tff.federated_zip({"scaled_value": summed_value, "example_task": inner_output.measurements})
            return tff.templates.MeasuredProcessOutput(state=new_state, result=unscaled_value,
                                                       measurements=measurements)

        return tff.templates.AggregationProcess(initialize_fn, next_fn)


def scaled_mean(cfg) -> tff.aggregators.WeightedAggregationFactory:  # noqa: ARG001 - the hook passes the config
    """FedAvg's weighted mean with the tutorial's factory as the sum of the weighted updates."""
    return tff.aggregators.MeanFactory(value_sum_factory=ExampleTaskFactory())


def tutorial_example() -> dict[str, float]:
    """The tutorial's first call: clients holding 1.0, 2.0 and 5.0 -> the sum 8.0, scaled sum 800.0."""
    process = ExampleTaskFactory().create(tff.TensorType(np.float32))
    output = process.next(process.initialize(), [1.0, 2.0, 5.0])
    return {"tutorial_example_result": float(output.result),
            "tutorial_example_scaled_sum": float(output.measurements["scaled_value"]),
            "tutorial_example_rounds_in_state": int(output.state[0])}
