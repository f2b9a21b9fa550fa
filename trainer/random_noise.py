"""Random noise generation (TFF tutorial random_noise_generation): the tutorial's cells on TF 2.14 / TFF 0.87,
and the project's own seeded DP noise checked against the tutorial's advice.

The tutorial's advice: noise inside TFF computations comes from ``tf.random.stateless_*`` ops whose seed is
an explicit input (a server-held seed, broadcast when clients must agree), or from a
``tf.random.Generator.from_seed`` built inside the computation; never from ``tf.random.normal`` under
``tf.random.set_seed``. Its pitfall: under a global seed a ``tf.function`` draws the same "random" value
again each time it is re-traced (every trace is a new graph whose op seeds restart), and a TFF computation
ignores the global seed altogether (each call draws anew, irreproducibly).

The project's DP noise (trainer/seeded_dp.py) is ``stateless_normal`` from a seed in the aggregator state,
derived from the experiment seed and advanced once per round: :func:`project_dp_noise` replays the run
(one go, from round 0, on a freshly built process) and shows its noise is a function of (seed, round)
only — the same on replay, on a rebuild under another global seed, and in the chunked run itself — and
differs from round to round. docs/randomness.md lists every source of randomness in the project.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow.python.eager import context

SEED_TYPE = tff.TensorType(np.int64, [2])
TUTORIAL_CLIENTS = 10  # the tutorial's set_local_python_execution_context(default_num_clients=10)


class Error(Exception):
    """Base class for random-noise measurement errors."""


def printed(value) -> float:
    """``value`` as numpy prints a float32 (the tutorial's ``print(n1.numpy())``): 0.3052047, not 0.30520469..."""
    return float(str(np.float32(value)))


@contextlib.contextmanager
def global_seed(seed: int | None) -> Iterator[None]:
    """``tf.random.set_seed(seed)`` for the block, then the process's global seed as it was (setting it back
    restarts TF's sequence of op seeds, as every ``set_seed`` does; the trainer draws nothing from it)."""
    saved = context.global_seed()
    tf.random.set_seed(seed)
    try:
        yield
    finally:
        tf.random.set_seed(saved)


def values_on_clients(
    seeds: Sequence[Sequence[int]], num_clients: int, *, per_client: bool = False
) -> list[list[float]]:
    """The tutorial's "identical noise on clients": for each server seed, the seed is broadcast and every
    one of ``num_clients`` clients draws ``tf.random.stateless_normal((), seed)``; returns each seed's
    client values. ``per_client``: each client first folds its index into the seed
    (``stateless_fold_in``), giving independent but reproducible values per client."""

    @tff.tensorflow.computation(SEED_TYPE, np.int32)
    def draw(seed, client_index):
        if per_client:
            seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(client_index, tf.int64))
        return tf.random.stateless_normal((), seed=seed)

    @tff.federated_computation(tff.FederatedType(SEED_TYPE, tff.SERVER), tff.FederatedType(np.int32, tff.CLIENTS))
    def on_clients(seed, client_indices):
        return tff.federated_map(draw, tff.federated_zip((tff.federated_broadcast(seed), client_indices)))

    indices = list(range(num_clients))
    return [[float(v) for v in on_clients(np.asarray(seed, np.int64), indices)] for seed in seeds]


def independent_values_on_clients(num_clients: int) -> list[float]:
    """The tutorial's "independent noise on clients": ``Generator.from_non_deterministic_state`` per client."""

    @tff.tensorflow.computation
    def nondeterministic_noise():
        return tf.random.Generator.from_non_deterministic_state().normal(())

    @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
    def on_clients(client_indices):
        del client_indices  # only sets the number of clients
        return tff.federated_eval(nondeterministic_noise, tff.CLIENTS)

    return [float(v) for v in on_clients(list(range(num_clients)))]


def keras_initializer_on_clients(num_clients: int) -> tuple[list[float], list[float]]:
    """The tutorial's "model initializer on clients": each client builds ``Dense(1)`` on one input and returns its
    initial kernel; two calls. On Keras 2.14 an unseeded initializer draws a seed (Python's ``random``) when
    traced and then runs a stateless op, so every client and call gets the same value."""

    @tff.tensorflow.computation
    def model_init():
        inputs = tf.keras.Input(shape=(1,))
        model = tf.keras.Model(inputs=inputs, outputs=tf.keras.layers.Dense(1)(inputs))
        return tf.reshape(tff.learning.models.ModelWeights.from_model(model).trainable[0], [-1])[0]

    @tff.federated_computation(tff.FederatedType(np.int32, tff.CLIENTS))
    def on_clients(client_indices):
        del client_indices  # only sets the number of clients
        return tff.federated_eval(model_init, tff.CLIENTS)

    indices = list(range(num_clients))
    return [float(v) for v in on_clients(indices)], [float(v) for v in on_clients(indices)]


def generator_from_seed_values() -> tuple[float, float]:
    """The tutorial's ``tff_return_one_noise(1), tff_return_one_noise(2)``: ``Generator.from_seed(i).normal([])``
    inside a TFF computation, ``i`` a tensor."""

    @tff.tensorflow.computation(np.int64)
    def one_noise(i):
        generator = tf.random.Generator.from_seed(i)

        @tf.function
        def draw():
            return generator.normal([])

        return draw()

    @tff.federated_computation
    def two_noise():
        return one_noise(np.int64(1)), one_noise(np.int64(2))

    n1, n2 = two_noise()
    return float(n1), float(n2)


def tutorial_values() -> dict[str, float]:
    """The tutorial's printed values and claims, measured here (one TFF computation per cell)."""
    (at_1_1, at_2_2) = values_on_clients([(1, 1), (2, 2)], TUTORIAL_CLIENTS)
    independent = independent_values_on_clients(TUTORIAL_CLIENTS)
    from_seed_1, from_seed_2 = generator_from_seed_values()
    initial, initial_again = keras_initializer_on_clients(TUTORIAL_CLIENTS)
    return {
        "stateless_normal_seed_1_1": printed(at_1_1[0]),
        "stateless_normal_seed_2_2": printed(at_2_2[0]),
        "stateless_normal_seed_1_1_3dp": round(at_1_1[0], 3),  # the tutorial prints {min:8.3f}
        "stateless_normal_seed_2_2_3dp": round(at_2_2[0], 3),
        "stateless_clients_agree": float(len(set(at_1_1)) == 1 and len(set(at_2_2)) == 1),
        "stateless_eager_equals_clients": float(
            printed(tf.random.stateless_normal((), seed=[1, 1])) == printed(at_1_1[0])
        ),
        "generator_from_seed_1": printed(from_seed_1),
        "generator_from_seed_2": printed(from_seed_2),
        # Eager, with a Python int: create_rng_state puts 1 first ([1, 0, 0]), a tensor seed last ([0, 0, 1]).
        "generator_from_python_int_seed_1_eager": printed(tf.random.Generator.from_seed(1).normal([])),
        "nondeterministic_clients_distinct": float(len(set(independent)) == len(independent)),
        "keras_initializer_clients_distinct": float(len(set(initial)) == len(initial)),
        "keras_initializer_calls_distinct": float(initial != initial_again),
        "tutorial_clients": TUTORIAL_CLIENTS,
    }


def set_seed_pitfall() -> dict[str, float]:
    """The tutorial's "discouraged usage", under ``tf.random.set_seed(1)`` (the process's global seed is
    restored after): a ``tf.function`` re-traced for a new argument draws the same value again, the same
    trace called again draws the next one; a TFF computation ignores the global seed (two calls differ)."""
    with global_seed(1):

        @tf.function
        def return_one_noise(_):
            return tf.random.normal([])

        n1, n2 = return_one_noise(1), return_one_noise(2)  # a new Python argument: a new trace
        n3 = return_one_noise(2)  # the same trace again

        @tff.tensorflow.computation(np.int32)
        def tff_return_one_noise(_):
            return tf.random.normal([])

        t1, t2 = tff_return_one_noise(1), tff_return_one_noise(2)
    return {
        "set_seed_retraced_value": printed(n1),
        "set_seed_retrace_repeats_value": float(printed(n1) == printed(n2)),
        "set_seed_same_trace_draws_anew": float(printed(n3) != printed(n2)),
        "set_seed_ignored_by_tff_computation": float(float(t1) != float(t2)),
    }


def seeded_clients_agree(seed: int, rounds: int, num_clients: int) -> dict[str, float]:
    """The tutorial's pattern with seeds from (experiment seed, round): every client of a round draws the
    same value, and rounds differ; with the client index folded in, clients differ and a replay agrees."""
    seeds = [(seed, round_num) for round_num in range(1, rounds + 1)]
    per_round = values_on_clients(seeds, num_clients)
    per_client = values_on_clients(seeds, num_clients, per_client=True)
    again = values_on_clients(seeds, num_clients, per_client=True)
    return {
        "seeded_clients_agree_every_round": float(all(len(set(values)) == 1 for values in per_round)),
        "seeded_rounds_distinct": float(len({values[0] for values in per_round}) == rounds),
        "per_client_seeds_distinct": float(all(len(set(values)) == num_clients for values in per_client)),
        "per_client_seeds_reproducible": float(per_client == again),
        "seeded_clients_checked": num_clients,
    }


def round_noise(aggregation: tff.templates.AggregationProcess, aggregator_state, update_type) -> np.ndarray:
    """The noise a round adds from ``aggregator_state``: the aggregate of one all-zero update (clipping
    and zeroing leave zero alone, so the result is the noise over the expected clients per round)."""
    zeros = [np.zeros(t.shape, t.dtype) for t in update_type]
    result = aggregation.next(aggregator_state, [zeros], [np.float32(1.0)]).result
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in result])


def project_dp_noise(exp) -> dict[str, float]:
    """Replays the DP run ``exp`` in one go from round 0 to its newest checkpoint on a freshly built learning
    process (a second run with the run's seed) and measures the noise of every round from the aggregator
    state before it, twice on one aggregation process and once on another built under a different global
    seed (a re-trace with ``tf.random.set_seed`` set). The replay must end with the run's (chunked) newest
    weights: ``replay_max_weight_difference`` is 0 when every round is a function of (seed, round).

    Raises:
      Error: the run is not a DP run with noise (``aggregator``, ``noise_multiplier``).
    """
    from trainer import algorithms, hybrid, program, recipe_results  # noqa: PLC0415 - program imports this module

    cfg = exp.cfg
    if cfg.aggregator != "dp" or cfg.noise_multiplier <= 0:
        raise Error(
            f"The DP-noise measurement needs aggregator='dp' and noise_multiplier > 0. Got aggregator="
            f"{cfg.aggregator!r}, noise_multiplier={cfg.noise_multiplier}. Fix: set both in the recipe."
        )
    process = algorithms.build_learning_process(cfg, exp.model_fn)
    update_type = process.initialize.type_signature.result.member.global_model_weights.trainable
    aggregation = hybrid.aggregation_process(cfg, update_type)
    with global_seed(cfg.seed + 1):  # the pitfall's setting: it must not change the project's noise
        retraced = hybrid.aggregation_process(cfg, update_type)
    start = program.initial_state(exp)
    state = process.set_model_weights(process.initialize(), exp.process.get_model_weights(start))
    latest = exp.checkpoints.load_latest()
    noise, replay_diff, rebuild_diff = [], 0.0, 0.0
    for round_num, output in recipe_results.replay(exp, process, state):
        first = round_noise(aggregation, state.aggregator, update_type)
        replay_diff = max(replay_diff, _max_diff(first, round_noise(aggregation, state.aggregator, update_type)))
        rebuild_diff = max(rebuild_diff, _max_diff(first, round_noise(retraced, state.aggregator, update_type)))
        noise.append(first)
        state = output.state
        if round_num == latest.round_num:
            break
    final = tf.nest.pack_sequence_as(exp.process.initialize(), latest.leaves)
    weight_diff = max(
        _max_diff(a, b)
        for a, b in zip(
            exp.process.get_model_weights(final).trainable, process.get_model_weights(state).trainable, strict=True
        )
    )
    other_seed = hybrid.aggregation_process(dataclasses.replace(cfg, seed=cfg.seed + 1), update_type)
    other = round_noise(other_seed, other_seed.initialize(), update_type)
    fresh = round_noise(aggregation, aggregation.initialize(), update_type)
    return {
        "dp_noise_replay_max_difference": replay_diff,
        "dp_noise_rebuild_max_difference": rebuild_diff,
        "dp_noise_round_1_fresh_max_difference": _max_diff(fresh, noise[0]),
        "dp_noise_differs_every_round": float(all(_max_diff(a, b) > 0 for a, b in zip(noise, noise[1:], strict=False))),
        "dp_noise_other_seed_differs": float(_max_diff(other, noise[0]) > 0),
        "replay_max_weight_difference": weight_diff,
        "dp_noise_rounds": len(noise),
        **_noise_stddev(cfg, noise),
    }


def _noise_stddev(cfg, noise: list[np.ndarray]) -> dict[str, float]:
    """The noise's standard deviation against clip x noise multiplier / clients per round (fixed clipping;
    adaptive clipping moves the clip every round)."""
    measured = float(np.std(np.concatenate(noise)))
    if cfg.dp_clipping != "fixed":
        return {"dp_noise_stddev": measured}
    expected = cfg.dp_clip * cfg.noise_multiplier / cfg.clients_per_round
    return {
        "dp_noise_stddev": measured,
        "dp_noise_expected_stddev": expected,
        "dp_noise_stddev_ratio": measured / expected,
    }


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def measure(exp) -> dict[str, float]:
    """The recipe's measurement: the tutorial's values, its pitfall, seeded values on the run's clients per
    round, and the run's DP noise (:func:`project_dp_noise`)."""
    return {
        **tutorial_values(),
        **set_seed_pitfall(),
        **seeded_clients_agree(exp.cfg.seed, exp.cfg.rounds, exp.cfg.clients_per_round),
        **project_dp_noise(exp),
    }
