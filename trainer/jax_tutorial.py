"""The jax_support tutorial on TFF 0.87: its JAX computations built and typed, their execution refused, and the
jax engine's round held to the tff engine's.

The tutorial (docs/tutorials/jax_support.ipynb) wraps JAX code as TFF computations — ``add_numbers``, the
softmax-regression ``loss``, ``train_on_one_batch`` (one SGD step), ``train_on_one_client``
(``tff.sequence_reduce`` over a client's batches) and ``train_one_round`` (broadcast, map, ``federated_mean``)
— prints their type signatures and the XLA they serialize to, then executes them on TFF's XLA runtime
(``tff.backends.xla.set_local_python_execution_context``) and trains with
``tff.learning.build_jax_federated_averaging_process``. In TFF 0.87 the wrapper is ``tff.jax.computation``
and every computation still traces to the same types, but the runtime and the canned process are gone: a call
fails with INVALID_ARGUMENT (tasks/config_jax.py has the why and the upstream references). :func:`measure`
records all of it, and what runs instead: the run itself trains on the ``jax`` engine (trainer/jax_engine.py).
"""

from __future__ import annotations

import collections
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks.config_jax import JAX_ALGORITHMS, JAX_MODELS

log = logging.getLogger("fedflow.trainer")
ARTIFACTS = "artifacts"  # inside the run directory; the Airflow side logs it under "recipe/"
SIGNATURES_FILE = "jax_type_signatures.txt"
# The tutorial's types: batches of 50 MNIST images (784 pixels), 10 classes, and its step size.
TUTORIAL_SHAPE = {"batch": 50, "features": 784, "classes": 10}
STEP_SIZE = 0.001


def tutorial_loss(model, batch, num_classes: int = 10):
    """The tutorial's ``loss``: softmax regression's mean cross-entropy (softmax, then log, as written there)."""
    y = jax.nn.softmax(jnp.add(jnp.matmul(batch["pixels"], model["weights"]), model["bias"]))
    targets = jax.nn.one_hot(jnp.reshape(batch["labels"], -1), num_classes)
    return -jnp.mean(jnp.sum(targets * jnp.log(y), axis=1))


def train_on_one_batch_fn(model, batch, num_classes: int = 10, step_size: float = STEP_SIZE):
    """The tutorial's ``train_on_one_batch`` body: one SGD step on ``tutorial_loss``."""
    grads = jax.grad(tutorial_loss)(model, batch, num_classes)
    return collections.OrderedDict((k, model[k] - step_size * grads[k]) for k in ("weights", "bias"))


def tutorial_computations(*, batch: int, features: int, classes: int) -> dict[str, tff.Computation]:
    """The tutorial's computations for batches of ``batch`` examples of ``features`` values, ``classes`` classes:
    ``add_numbers``, ``train_on_one_batch`` (JAX), ``train_on_one_client`` and ``train_one_round`` (TFF's
    federated core around it). Tracing only: nothing executes."""
    batch_type = collections.OrderedDict(
        pixels=tff.TensorType(np.float32, (batch, features)), labels=tff.TensorType(np.int32, (batch,))
    )
    model_type = collections.OrderedDict(
        weights=tff.TensorType(np.float32, (features, classes)), bias=tff.TensorType(np.float32, (classes,))
    )

    @tff.jax.computation(np.int32, np.int32)
    def add_numbers(x, y):
        return jnp.add(x, y)

    @tff.jax.computation(model_type, batch_type)
    def train_on_one_batch(model, batch):
        return train_on_one_batch_fn(model, batch, classes)

    @tff.federated_computation(model_type, tff.SequenceType(batch_type))
    def train_on_one_client(model, batches):
        return tff.sequence_reduce(batches, model, train_on_one_batch)

    @tff.federated_computation(
        tff.FederatedType(model_type, tff.SERVER), tff.FederatedType(tff.SequenceType(batch_type), tff.CLIENTS)
    )
    def train_one_round(model, federated_data):
        locally_trained = tff.federated_map(
            train_on_one_client, collections.OrderedDict(model=tff.federated_broadcast(model), batches=federated_data)
        )
        return tff.federated_mean(locally_trained)

    return {
        "add_numbers": add_numbers,
        "train_on_one_batch": train_on_one_batch,
        "train_on_one_client": train_on_one_client,
        "train_one_round": train_one_round,
    }


def execution_attempt(computation: tff.Computation, *args) -> dict[str, str]:
    """Calls ``computation`` in TFF's default execution context: ``status`` 'OK' and the result, or the error's
    gRPC status code (e.g. 'INVALID_ARGUMENT') and details. The refusal is what TFF 0.87 answers; it is
    recorded, not raised."""
    try:
        return {"status": "OK", "details": repr(computation(*args))}
    except Exception as error:  # noqa: BLE001 - grpc's _InactiveRpcError, whatever TFF raises: the record is the point
        code = getattr(error, "code", None)
        status = code().name if callable(code) else type(error).__name__
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        return {"status": status, "details": details}


def measure(exp) -> dict:
    """The recipe's results: type signatures (tutorial shapes, and this run's), the serialized form, TFF's
    answer to a call, the tutorial's loss identities on this data, one round of the jax engine against the
    tff and hybrid engines from the run's round-0 state, their s/round, and the majority-class baseline.
    Writes ``artifacts/jax_type_signatures.txt``."""
    from trainer import program  # noqa: PLC0415 - program imports recipe_results, which imports this module

    cfg = exp.cfg
    test = program.read_split(exp, "test")
    features, classes = int(np.prod(test.x.shape[1:])), int(exp.manifest.num_classes)
    tutorial = tutorial_computations(**TUTORIAL_SHAPE)
    ours = tutorial_computations(batch=cfg.batch_size, features=features, classes=classes)
    signatures = {name: str(c.type_signature) for name, c in tutorial.items()}
    signatures.update(
        {f"{name} (this run's shapes)": str(c.type_signature) for name, c in ours.items() if name != "add_numbers"}
    )
    serialized = tff.framework.serialize_computation(tutorial["add_numbers"]).WhichOneof("computation")
    attempt = execution_attempt(tutorial["add_numbers"], 2, 3)
    _write_signatures(exp, signatures, serialized, attempt)
    log.info("JAX computations: %s; serialized as %r; add_numbers(2, 3) -> %s", signatures, serialized, attempt)
    parity = engine_parity(exp)
    return {
        "add_numbers_type_signature": signatures["add_numbers"],
        "train_on_one_batch_type_signature": signatures["train_on_one_batch"],
        "train_on_one_client_type_signature": signatures["train_on_one_client"],
        "train_one_round_type_signature": signatures["train_one_round"],
        "train_one_round_type_signature_here": signatures["train_one_round (this run's shapes)"],
        "serialized_computation": serialized,
        "tff_execution_status": attempt["status"],
        "tff_execution_details": attempt["details"],
        "build_jax_federated_averaging_process_exists": float(
            hasattr(tff.learning, "build_jax_federated_averaging_process")
        ),
        **loss_identities(test.x.reshape(len(test.y), -1), test.y, classes),
        **parity,
        "test_majority_class_accuracy": float(np.bincount(test.y).max() / len(test.y)),
        "test_examples": int(len(test.y)),
    }


def loss_identities(x: np.ndarray, y: np.ndarray, classes: int) -> dict[str, float]:
    """The tutorial's loss in JAX on this data: at the zero model it is ln(classes) whatever the data (the
    tutorial prints 2.3025854 for ln 10); one ``train_on_one_batch`` step (jit, outside TFF) lowers it on
    that batch (the tutorial: 2.3025854 -> 2.2977567 on a random batch)."""
    model = collections.OrderedDict(
        weights=jnp.zeros((x.shape[1], classes), jnp.float32), bias=jnp.zeros((classes,), jnp.float32)
    )
    batch = collections.OrderedDict(pixels=jnp.asarray(x, jnp.float32), labels=jnp.asarray(y, jnp.int32))
    loss = jax.jit(tutorial_loss, static_argnums=2)
    step = jax.jit(train_on_one_batch_fn, static_argnums=(2, 3))
    first = collections.OrderedDict((k, v[:50]) for k, v in batch.items())
    after = step(model, first, classes, STEP_SIZE)
    return {
        "initial_loss": float(loss(model, batch, classes)),
        "ln_num_classes": math.log(classes),
        "one_batch_loss_before": float(loss(model, first, classes)),
        "one_batch_loss_after": float(loss(after, first, classes)),
    }


def engine_parity(exp, rounds: int = 3) -> dict[str, float]:
    """``rounds`` rounds (at most the run's) on the tff, hybrid and jax engines from the run's round-0 state:
    the max |weight difference| of round 1 from the same state (jax vs tff, jax vs hybrid), and each engine's
    mean seconds per round after its first (which traces or compiles)."""
    from trainer import program  # noqa: PLC0415 - program imports recipe_results, which imports this module

    cfg = exp.cfg
    if (
        cfg.model not in JAX_MODELS
        or cfg.algorithm not in JAX_ALGORITHMS
        or cfg.learning_process
        or cfg.corrupt_clients
    ):
        log.warning("No jax-engine parity: it does not train model %r / algorithm %r", cfg.model, cfg.algorithm)
        return {}  # the recipe's parity checks then report the values missing
    ids = exp.manifest.client_ids("train")
    client_ids = ids[: len(ids) - cfg.heldout_clients]
    clients = {cid: program.read_client(exp, "train", cid) for cid in ids}
    index = {cid: i for i, cid in enumerate(ids)}
    start = program.initial_state(exp)
    rounds = min(rounds, cfg.rounds)
    first_round, seconds = {}, {}
    for engine in ("tff", "hybrid", "jax"):
        runner = program.RoundRunner(exp, engine, clients, index, client_ids)
        state, times = start, []
        try:
            for round_num in range(1, rounds + 1):
                began = time.perf_counter()
                state, _ = runner.next(state, round_num, rounds)
                times.append(time.perf_counter() - began)
                if round_num == 1:
                    first_round[engine] = [np.asarray(w) for w in state.global_model_weights.trainable]
        finally:
            runner.close()
        seconds[f"{engine}_seconds_per_round"] = float(np.mean(times[1:] or times))

    def difference(a: str, b: str) -> float:
        return max(float(np.max(np.abs(x - y))) for x, y in zip(first_round[a], first_round[b], strict=True))

    return {
        "jax_vs_tff_round_max_weight_difference": difference("jax", "tff"),
        "jax_vs_hybrid_round_max_weight_difference": difference("jax", "hybrid"),
        "round_weight_change": max(
            float(np.max(np.abs(w - np.asarray(w0))))
            for w, w0 in zip(first_round["tff"], start.global_model_weights.trainable, strict=True)
        ),
        "rounds_timed": rounds,
        **seconds,
    }


def _write_signatures(exp, signatures: dict[str, str], serialized: str, attempt: dict[str, str]) -> None:
    out = exp.paths.root / ARTIFACTS
    out.mkdir(exist_ok=True)
    lines = [
        f"TFF {tff.__version__}, jax {jax.__version__}, TensorFlow {tf.__version__}",
        "",
        "Type signatures (tff.jax.computation / tff.federated_computation, traced):",
    ]
    lines += [f"  {name}: {signature}" for name, signature in signatures.items()]
    lines += [
        "",
        f"tff.framework.serialize_computation(add_numbers).WhichOneof('computation'): {serialized!r}",
        f"add_numbers(2, 3) in TFF's execution context: {attempt['status']}",
        f"  {attempt['details']}",
    ]
    (out / SIGNATURES_FILE).write_text("\n".join(lines) + "\n")
