"""JAX in a config: the rules of the ``jax`` engine, and the refusal of TFF executing JAX computations itself.

TFF 0.87 builds JAX computations (``tff.jax.computation``, the tutorial's ``tff.jax_computation``) and gives
them TFF type signatures, but its pip package cannot execute them: every computation runs in
``worker_binary``, whose only leaf executor is TensorFlow's, and ``tff.backends.xla`` exports nothing (the
tutorial's ``tff.backends.xla.set_local_python_execution_context`` and
``tff.learning.build_jax_federated_averaging_process`` are gone). Measured here: calling one fails with
INVALID_ARGUMENT "`TensorFlowExecutor::CreateValueComputation` can only create values for computations and
intrinsics. Found computation of type 12" (12: the ``xla`` case of TFF's ``Computation`` proto). The XLA
executor lives on upstream outside TFF's pip package (``federated_language_jax/executor/xla_executor``); the
same refusal of a non-TensorFlow computation is google-parfait/tensorflow-federated#4166. The ``jax`` engine
(trainer/jax_engine.py) is the working path: the client work in JAX, jit-compiled in the trainer, aggregated
by TFF.

Plain Python: no Airflow, no TensorFlow (the trainer's environment validates configs too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.config import ConfigError

if TYPE_CHECKING:
    from tasks.config import ExperimentConfig

# The jax engine's client step is trainer/jax_client.py: local plain SGD of a dense network.
JAX_MODELS = ("softmax", "mlp")
JAX_ALGORITHMS = ("fedavg", "fedavg_unweighted", "fedadam", "fedyogi", "fedadagrad")
# The knob that asks TFF itself to execute the tutorial's JAX computations: refused at config resolution.
TFF_JAX_ENGINE = "tff_jax"
UPSTREAM_ISSUE = "google-parfait/tensorflow-federated#4166"
LIMITATION = (
    "TFF 0.87's pip package traces JAX computations (tff.jax.computation) but cannot execute them: its only "
    'runtime, worker_binary, has no XLA executor and answers INVALID_ARGUMENT "`TensorFlowExecutor::'
    "CreateValueComputation` can only create values for computations and intrinsics. Found computation of type "
    "12\", and tff.backends.xla exports nothing (the XLA executor moved out of TFF's pip package upstream; the "
    f"same refusal: {UPSTREAM_ISSUE})"
)


def unavailable_choice(name: str, value: object) -> str | None:
    """The message for a value a field does not offer because TFF 0.87 cannot do it, or None."""
    if name == "engine" and value == TFF_JAX_ENGINE:
        return (
            f"engine {TFF_JAX_ENGINE!r} asks TFF to execute the JAX tutorial's computations itself. "
            f"{LIMITATION}. Got engine={value!r}. Fix: engine='jax' (the client training in JAX, jit-compiled "
            "in the trainer, aggregated by TFF; recipe jax_support), or engine='tff' for TensorFlow models."
        )
    return None


def check(cfg: ExperimentConfig) -> None:
    """Raises ConfigError when ``engine: jax`` is asked for what it does not train."""
    if cfg.engine != "jax":
        return
    if cfg.model not in JAX_MODELS:
        raise ConfigError(
            f"engine 'jax' trains the dense models {list(JAX_MODELS)} (its client step is trainer/jax_client.py). "
            f"Got model={cfg.model!r}. Fix: model='softmax' or 'mlp', or engine='hybrid' / 'tff' for this model."
        )
    if cfg.algorithm not in JAX_ALGORITHMS:
        raise ConfigError(
            f"engine 'jax' runs FedAvg's local SGD, so the algorithms {list(JAX_ALGORITHMS)}. Got algorithm="
            f"{cfg.algorithm!r}. Fix: engine='hybrid' (or 'tff') for {cfg.algorithm}, or one of those algorithms."
        )
    if cfg.learning_process:
        raise ConfigError(
            f"learning_process {cfg.learning_process!r} runs on the 'tff' engine only (the jax engine trains the "
            "built-in algorithms). Got engine='jax'. Fix: engine='tff', or clear learning_process."
        )
