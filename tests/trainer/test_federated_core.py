"""TFF's tutorial custom_federated_algorithms_1 (the Federated Core), cell by cell on TFF 0.87: what the project
relies on about federated types, placements, federated and TensorFlow computations and sequences. Each test
pins the tutorial's printed type or value; part 2 (FedAvg from these primitives) is the recipe
custom_federated_algorithms (trainer/custom_federated_algorithms.py, tests/trainer/test_custom_federated_algorithms.py).
On 0.87 the tutorial's ``tff.tf_computation`` is ``tff.tensorflow.computation``; nothing else differs."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

READINGS = [68.5, 70.3, 69.8]
SENSORS = [[68.0, 70.0], [71.0], [68.0, 72.0, 70.0]]


def test_a_federated_computation_runs_in_the_local_runtime_and_returns_python_values():
    @tff.federated_computation
    def hello_world():
        return "Hello, World!"

    assert hello_world() == b"Hello, World!"


def test_a_federated_float_on_clients_is_a_multiset_printed_in_braces():
    federated_float_on_clients = tff.FederatedType(np.float32, tff.CLIENTS)
    assert str(federated_float_on_clients.member) == "float32"
    assert str(federated_float_on_clients.placement) == "CLIENTS"
    assert str(federated_float_on_clients) == "{float32}@CLIENTS"
    assert federated_float_on_clients.all_equal is False


def test_an_all_equal_federated_value_drops_the_braces_and_tuples_print_in_angle_brackets():
    assert str(tff.FederatedType(np.float32, tff.CLIENTS, all_equal=True)) == "float32@CLIENTS"
    simple_regression_model_type = tff.StructType([("a", np.float32), ("b", np.float32)])
    assert str(simple_regression_model_type) == "<a=float32,b=float32>"
    broadcast = tff.FederatedType(simple_regression_model_type, tff.CLIENTS, all_equal=True)
    assert str(broadcast) == "<a=float32,b=float32>@CLIENTS"
    assert tff.FederatedType(np.float32, tff.SERVER).all_equal is True  # the server holds one value by default


def test_federated_mean_takes_client_readings_to_one_value_at_the_server():
    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def get_average_temperature(sensor_readings):
        return tff.federated_mean(sensor_readings)

    assert str(get_average_temperature.type_signature) == "({float32}@CLIENTS -> float32@SERVER)"
    average = get_average_temperature(READINGS)
    # The tutorial prints 69.53334; TFF 0.87's runtime returns the float32 one step below, as the sequence
    # average does (the tutorial's 69.53333), i.e. sum / count rounded once.
    assert isinstance(average, np.float32) and average == np.float32(69.53333)


def test_a_federated_computation_is_traced_once_at_definition_with_abstract_values():
    traced = []

    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def get_average_temperature(sensor_readings):
        traced.append(type(sensor_readings).__name__)
        return tff.federated_mean(sensor_readings)

    get_average_temperature(READINGS)
    get_average_temperature([1.0, 2.0])
    # The tutorial's 'Getting traced, the argument is "Value".', once: a computation is not Python at run time.
    assert traced == ["Value"]


def test_a_tensorflow_computation_has_no_placement_and_federated_map_applies_it_on_each_client():
    @tff.tensorflow.computation(np.float32)
    def add_half(x):
        return tf.add(x, 0.5)

    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def add_half_on_clients(x):
        return tff.federated_map(add_half, x)

    assert str(add_half.type_signature) == "(float32 -> float32)"
    assert str(add_half_on_clients.type_signature) == "({float32}@CLIENTS -> {float32}@CLIENTS)"
    assert [float(v) for v in add_half_on_clients([1.0, 3.0, 2.0])] == [1.5, 3.5, 2.5]


def test_a_tensorflow_computation_builds_its_graph_and_cannot_capture_an_eager_tensor():
    constant_10 = tf.constant(10.0)
    with pytest.raises(Exception, match="Attempting to capture an EagerTensor without building a function"):

        @tff.tensorflow.computation(np.float32)
        def add_ten_captured(x):
            return x + constant_10

    def get_constant_10():
        return tf.constant(10.0)

    @tff.tensorflow.computation(np.float32)
    def add_ten(x):
        return x + get_constant_10()  # created inside the computation's graph: fine

    assert add_ten(5.0) == 15.0


def test_a_sequence_prints_with_a_star_and_is_a_dataset_inside_a_tensorflow_computation():
    assert str(tff.SequenceType(np.float32)) == "float32*"

    @tff.tensorflow.computation(tff.SequenceType(np.float32))
    def get_local_temperature_average(local_temperatures):
        sum_and_count = local_temperatures.reduce((0.0, 0), lambda x, y: (x[0] + y, x[1] + 1))
        return sum_and_count[0] / tf.cast(sum_and_count[1], tf.float32)

    @tff.tensorflow.computation(tff.SequenceType(np.int32))
    def foo(x):
        return x.reduce(np.int32(0), lambda x, y: x + y)

    assert str(get_local_temperature_average.type_signature) == "(float32* -> float32)"
    assert get_local_temperature_average(READINGS) == np.float32(69.53333)  # the tutorial's print
    assert foo([1, 2, 3]) == 6


def test_a_sequence_of_named_tuples_reaches_tensorflow_as_a_dataset_of_ordered_dicts():
    specs = []

    @tff.tensorflow.computation(tff.SequenceType(collections.OrderedDict([("A", np.int32), ("B", np.int32)])))
    def foo(ds):
        specs.append(ds.element_spec)
        return ds.reduce(np.int32(0), lambda total, x: total + x["A"] * x["B"])

    assert specs == [collections.OrderedDict(A=tf.TensorSpec([], tf.int32), B=tf.TensorSpec([], tf.int32))]
    assert str(foo.type_signature) == "(<A=int32,B=int32>* -> int32)"
    assert foo([{"A": 2, "B": 3}, {"A": 4, "B": 5}]) == 26


def test_the_global_temperature_is_the_mean_of_client_means_not_of_all_readings():
    @tff.tensorflow.computation(tff.SequenceType(np.float32))
    def get_local_temperature_average(local_temperatures):
        sum_and_count = local_temperatures.reduce((0.0, 0), lambda x, y: (x[0] + y, x[1] + 1))
        return sum_and_count[0] / tf.cast(sum_and_count[1], tf.float32)

    @tff.tensorflow.computation(tff.SequenceType(np.float32))
    def get_local_count(local_temperatures):
        return local_temperatures.reduce(0.0, lambda count, _: count + 1.0)

    @tff.federated_computation(tff.FederatedType(tff.SequenceType(np.float32), tff.CLIENTS))
    def get_global_temperature_average(sensor_readings):
        return tff.federated_mean(tff.federated_map(get_local_temperature_average, sensor_readings))

    @tff.federated_computation(tff.FederatedType(tff.SequenceType(np.float32), tff.CLIENTS))
    def get_weighted_temperature_average(sensor_readings):  # the exercise the tutorial leaves to the reader
        return tff.federated_mean(
            tff.federated_map(get_local_temperature_average, sensor_readings),
            tff.federated_map(get_local_count, sensor_readings),
        )

    assert str(get_global_temperature_average.type_signature) == "({float32*}@CLIENTS -> float32@SERVER)"
    assert get_global_temperature_average(SENSORS) == pytest.approx(70.0, abs=1e-5)  # (69 + 71 + 70) / 3
    all_readings = [t for sensor in SENSORS for t in sensor]
    assert get_weighted_temperature_average(SENSORS) == pytest.approx(np.mean(all_readings), abs=1e-4)  # 69.857
