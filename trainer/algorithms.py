"""Learning algorithms by name: the config's ``algorithm`` -> a TFF learning process.

Each entry is a constructor taking (config, model_fn), in the spirit of google-research/federated's
``TASK_CONSTRUCTORS`` table. Client and server steps are ``tff.learning.optimizers`` objects (TFF 0.87
refuses Keras optimizers).

- ``fedavg`` / ``fedavg_unweighted``: McMahan et al. 2017, "Communication-Efficient Learning of Deep
  Networks from Decentralized Data"; client updates averaged by example count, or uniformly.
- ``fedsgd``: the same paper's FedSGD baseline: each client sends the gradient over its whole data at
  the current model (no local steps; ``client_learning_rate`` and ``local_epochs`` have no effect).
- ``fedprox``: Li et al. 2020, "Federated Optimization in Heterogeneous Networks"; local SGD with a
  proximal term of strength ``proximal_strength`` (mu).
- ``fedadam`` / ``fedyogi`` / ``fedadagrad``: Reddi et al. 2021, "Adaptive Federated Optimization";
  FedAvg client work with an adaptive server optimizer (epsilon ``server_epsilon``, the paper's tau).
- ``fed_recon``: Singhal et al. 2021, "Federated Reconstruction: Partially Local Federated Learning"; its
  model is a ``tff.learning.models.ReconstructionModel`` (trainer/reconstruction.py runs it).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow_federated as tff

from tasks.config import ExperimentConfig
from trainer import aggregators, learning_process_plugin

LearningProcess = tff.learning.templates.LearningProcess
# Clients iterate their batches with a Python-style iterator rather than `dataset.reduce` (TFF's
# default): measured 1.6-1.9x faster per round here (`make bench`), same arithmetic.
LOOP = tff.learning.LoopImplementation.DATASET_ITERATOR


def client_optimizer(cfg: ExperimentConfig) -> tff.learning.optimizers.Optimizer:
    """Client SGD (both engines)."""
    return tff.learning.optimizers.build_sgdm(learning_rate=cfg.client_learning_rate)


def server_optimizer(cfg: ExperimentConfig) -> tff.learning.optimizers.Optimizer:
    """The server step on the aggregated update: SGD (with ``server_momentum``, 0 = none), or
    Adam/Yogi/Adagrad (both engines; the config refuses momentum with these)."""
    adaptive = {
        "fedadam": tff.learning.optimizers.build_adam,
        "fedyogi": tff.learning.optimizers.build_yogi,
        "fedadagrad": tff.learning.optimizers.build_adagrad,
    }
    if cfg.algorithm in adaptive:
        return adaptive[cfg.algorithm](learning_rate=cfg.server_learning_rate, epsilon=cfg.server_epsilon)
    return tff.learning.optimizers.build_sgdm(learning_rate=cfg.server_learning_rate,
                                              momentum=cfg.server_momentum or None)


def _local_training(cfg: ExperimentConfig, model_fn: Callable, weighted, unweighted, **extra) -> LearningProcess:
    """Local-SGD client work, weighted or uniform as the aggregator requires (DP forces uniform)."""
    factory = aggregators.build_model_aggregator(cfg)
    build = weighted if aggregators.is_weighted(cfg, factory) else unweighted
    return build(model_fn, client_optimizer_fn=client_optimizer(cfg), server_optimizer_fn=server_optimizer(cfg),
                 model_aggregator=factory, loop_implementation=LOOP, **extra)


def _fedavg(cfg: ExperimentConfig, model_fn: Callable) -> LearningProcess:
    algorithms = tff.learning.algorithms
    return _local_training(cfg, model_fn, algorithms.build_weighted_fed_avg, algorithms.build_unweighted_fed_avg)


def _fedsgd(cfg: ExperimentConfig, model_fn: Callable) -> LearningProcess:
    factory = aggregators.build_model_aggregator(cfg)
    if not aggregators.is_weighted(cfg, factory):
        raise aggregators.Error("fedsgd needs a weighted aggregator. Fix: choose another algorithm or aggregator.")
    return tff.learning.algorithms.build_fed_sgd(
        model_fn, server_optimizer_fn=server_optimizer(cfg), model_aggregator=factory, loop_implementation=LOOP
    )


def _fedprox(cfg: ExperimentConfig, model_fn: Callable) -> LearningProcess:
    algorithms = tff.learning.algorithms
    return _local_training(cfg, model_fn, algorithms.build_weighted_fed_prox, algorithms.build_unweighted_fed_prox,
                           proximal_strength=cfg.proximal_strength)


def _fed_recon(cfg: ExperimentConfig, model_fn: Callable) -> LearningProcess:
    from trainer import reconstruction  # noqa: PLC0415 - reconstruction imports this module

    return reconstruction.build_learning_process(cfg, model_fn)


def _sparse_select(cfg: ExperimentConfig, model_fn: Callable) -> LearningProcess:
    raise NotImplementedError(
        "sparse_select is no tff.learning process: trainer/sparse_training.py runs its federated_select round. "
        f"Got algorithm={cfg.algorithm!r}, model_fn={model_fn!r}."
    )


ALGORITHMS: dict[str, Callable[[ExperimentConfig, Callable], LearningProcess]] = {
    "fedavg": _fedavg,
    "fedavg_unweighted": _fedavg,
    "fedsgd": _fedsgd,
    "fedprox": _fedprox,
    "fedadam": _fedavg,
    "fedyogi": _fedavg,
    "fedadagrad": _fedavg,
    "fed_recon": _fed_recon,
    "sparse_select": _sparse_select,
}


def build_learning_process(cfg: ExperimentConfig, model_fn: Callable) -> LearningProcess:
    """The TFF learning process of ``cfg.algorithm`` (names: :data:`ALGORITHMS`), or the one a user's
    ``cfg.learning_process`` builds (trainer/learning_process_plugin.py)."""
    if cfg.learning_process:
        return learning_process_plugin.load_learning_process(cfg, model_fn)
    return ALGORITHMS[cfg.algorithm](cfg, model_fn)
