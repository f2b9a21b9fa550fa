"""The cross-field rules of an experiment config (``ExperimentConfig.__post_init__`` runs :func:`check` after
each field passed its own bounds): settings that cannot go together, each refused with the fix.

Plain Python: no Airflow, no TensorFlow (the trainer's environment validates configs too)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tasks import config_jax, config_sparse
from tasks.config import (
    _DEFAULTS,
    DATASET_KINDS,
    HYBRID_ALGORITHMS,
    MAX_CHUNKS,
    PATH_DATASETS,
    RECONSTRUCTION,
    SPARSE_SELECT,
    TEXT_MODELS,
    ConfigError,
)

if TYPE_CHECKING:
    from tasks.config import ExperimentConfig


def check(cfg: ExperimentConfig) -> None:
    """Raises ConfigError for the first rule ``cfg`` breaks."""
    training_clients = cfg.num_clients - cfg.heldout_clients
    if cfg.clients_per_round > training_clients:
        raise ConfigError(
            f"clients_per_round must be <= num_clients - heldout_clients ({training_clients}). "
            f"Got {cfg.clients_per_round}. Fix: lower clients_per_round or heldout_clients, or raise num_clients."
        )
    if (cfg.aggregator == "custom") != bool(cfg.custom_aggregator):
        raise ConfigError(
            "custom_aggregator must be set exactly when aggregator is 'custom'. "
            f"Got aggregator={cfg.aggregator!r}, custom_aggregator={cfg.custom_aggregator!r}. "
            "Fix: set both, e.g. aggregator='custom', custom_aggregator='my_pkg.aggs:build'."
        )
    if cfg.compress and cfg.aggregator in ("secure", "custom"):
        raise ConfigError(
            f"compress composes with the mean, robust and dp aggregators. Got aggregator={cfg.aggregator!r}. "
            "Fix: compress=false (secure aggregation quantises already; a custom factory composes its own)."
        )
    if cfg.aggregator == "dp":
        _check_dp(cfg)
    _check_learning_process(cfg)
    if cfg.corrupt_clients:
        _check_corruption(cfg)
    _check_optimizer_and_calibration(cfg)
    if cfg.max_concurrent_computation_calls and cfg.aggregator == "secure":
        raise ConfigError(
            "max_concurrent_computation_calls sets TFF's local C++ runtime, but aggregator 'secure' runs in "
            f"TFF's test runtime. Got max_concurrent_computation_calls={cfg.max_concurrent_computation_calls}. "
            "Fix: max_concurrent_computation_calls=0, or another aggregator."
        )
    if cfg.engine == "hybrid" and cfg.algorithm not in HYBRID_ALGORITHMS:
        raise ConfigError(
            f"algorithm {cfg.algorithm!r} runs on the 'tff' engine only. Got engine='hybrid'. "
            f"Fix: engine='tff', or one of {list(HYBRID_ALGORITHMS)}."
        )
    config_jax.check(cfg)
    _check_data(cfg)
    _check_reconstruction(cfg)
    config_sparse.check(cfg)
    _check_text(cfg)
    if cfg.num_chunks > MAX_CHUNKS:
        needed = math.ceil(cfg.rounds / MAX_CHUNKS)
        raise ConfigError(
            f"rounds_per_chunk: {cfg.rounds} rounds in chunks of {cfg.rounds_per_chunk} need "
            f"{cfg.num_chunks} chunks, but the DAG has {MAX_CHUNKS}. "
            f"Got rounds_per_chunk={cfg.rounds_per_chunk}. Fix: set rounds_per_chunk >= {needed}."
        )


def _check_dp(cfg: ExperimentConfig) -> None:
    if cfg.algorithm == "fedsgd":
        raise ConfigError(
            "aggregator 'dp' needs client updates averaged uniformly; fedsgd weights them by examples. "
            "Got algorithm='fedsgd'. Fix: use fedavg, fedavg_unweighted, fedprox or an adaptive algorithm."
        )
    if cfg.dp_clipping == "adaptive" and cfg.noise_multiplier >= 0.1 * cfg.clients_per_round:
        raise ConfigError(
            f"noise_multiplier must be < 0.1 x clients_per_round = {0.1 * cfg.clients_per_round:g} with "
            f"adaptive DP clipping (part of the noise protects the clip estimate). Got {cfg.noise_multiplier}. "
            f"Fix: clients_per_round >= {math.floor(10 * cfg.noise_multiplier) + 1}, a smaller noise_multiplier, "
            "or dp_clipping='fixed'."
        )

def _check_learning_process(cfg: ExperimentConfig) -> None:
    if cfg.learning_process and cfg.engine == "hybrid":
        raise ConfigError(
            f"learning_process {cfg.learning_process!r} runs on the 'tff' engine only (the hybrid engine trains "
            "the built-in algorithms). Got engine='hybrid'. Fix: engine='tff', or clear learning_process."
        )
    if cfg.client_gradient_clip and not cfg.learning_process:
        raise ConfigError(
            f"client_gradient_clip applies to a learning_process that clips gradients; the built-in algorithms "
            f"do not. Got client_gradient_clip={cfg.client_gradient_clip} with learning_process=''. Fix: set "
            "learning_process='trainer.tutorial_algorithms:fedavg_with_gradient_clipping', or set it to 0."
        )
    if cfg.client_learning_rate_decay != 1.0 and not cfg.learning_process:
        raise ConfigError(
            f"client_learning_rate_decay applies to a learning_process that decays the client learning rate; the "
            f"built-in algorithms keep it constant. Got client_learning_rate_decay={cfg.client_learning_rate_decay} "
            "with learning_process=''. Fix: set learning_process='trainer.custom_federated_algorithms:"
            "fedavg_from_primitives', or set it to 1."
        )

def _check_corruption(cfg: ExperimentConfig) -> None:
    if cfg.engine != "hybrid":
        raise ConfigError(
            f"corrupt_clients scales client updates before aggregation, which the hybrid engine does (the tff "
            f"engine aggregates inside TFF's learning process). Got engine={cfg.engine!r}, corrupt_clients="
            f"{cfg.corrupt_clients}. Fix: engine='hybrid', or corrupt_clients=0."
        )
    if cfg.corrupt_clients > cfg.clients_per_round:
        raise ConfigError(
            f"corrupt_clients must be <= clients_per_round ({cfg.clients_per_round}). Got "
            f"{cfg.corrupt_clients}. Fix: lower corrupt_clients."
        )

def _check_optimizer_and_calibration(cfg: ExperimentConfig) -> None:
    if cfg.server_momentum > 0 and cfg.algorithm in ("fedadam", "fedyogi", "fedadagrad"):
        raise ConfigError(
            f"server_momentum applies to the server's SGD; {cfg.algorithm} is an adaptive optimizer with its "
            f"own moment estimates. Got server_momentum={cfg.server_momentum}. Fix: server_momentum=0, or an "
            "SGD algorithm (fedavg, fedavg_unweighted, fedsgd, fedprox)."
        )
    if cfg.dp_target_epsilon > 0 and cfg.aggregator != "dp":
        raise ConfigError(
            f"dp_target_epsilon calibrates the DP aggregator's noise. Got aggregator={cfg.aggregator!r}. "
            "Fix: aggregator='dp', or dp_target_epsilon=0."
        )

def _check_data(cfg: ExperimentConfig) -> None:
    if cfg.dataset in PATH_DATASETS and not cfg.source_path:
        raise ConfigError(
            f"source_path is required for dataset {cfg.dataset!r}. Got ''. "
            "Fix: set source_path to the local file or directory."
        )
    if cfg.dataset not in PATH_DATASETS and (cfg.source_path or cfg.source_test_path):
        raise ConfigError(
            f"source_path / source_test_path apply to the {', '.join(PATH_DATASETS)} datasets. Got dataset="
            f"{cfg.dataset!r} with source_path={cfg.source_path!r}. Fix: clear them or pick a file data set."
        )
    if cfg.split == "source" and not cfg.source_test_path and cfg.dataset != "tff_sqlite":
        raise ConfigError("split 'source' needs source_test_path. Got ''. Fix: set source_test_path or "
                          "choose another split.")
    if cfg.source_test_path and cfg.split not in ("source", "auto"):
        raise ConfigError(f"source_test_path is only read with split 'source' or 'auto'. Got split="
                          f"{cfg.split!r}. Fix: split='source', or clear source_test_path.")
    if cfg.dataset == "digits" and cfg.split == "source":
        raise ConfigError("split 'source' needs a source with its own test file; digits has none. "
                          "Fix: split 'central', 'within_client' or 'by_client'.")
    if cfg.dataset != "digits" and cfg.split == "central":
        raise ConfigError(f"split 'central' pools a stratified test set from digits' examples. Got dataset="
                          f"{cfg.dataset!r}. Fix: split 'within_client', 'by_client' or 'source'.")
    if cfg.dataset == "digits" and cfg.partition == "pathological" and cfg.classes_per_client > 10:
        raise ConfigError(f"classes_per_client must be <= 10 (digits has 10 classes). Got "
                          f"{cfg.classes_per_client}.")

def _check_reconstruction(cfg: ExperimentConfig) -> None:
    """fed_recon, matrix_factorization and movielens go together, on the tff engine, with the plain mean."""
    chosen = {key: getattr(cfg, key) for key in RECONSTRUCTION}
    if chosen != RECONSTRUCTION and any(chosen[key] == value for key, value in RECONSTRUCTION.items()
                                        if key != "dataset"):
        raise ConfigError(
            f"algorithm 'fed_recon' trains model 'matrix_factorization' on dataset 'movielens', and only "
            f"together. Got {chosen}. Fix: set all three (recipe 'reconstruction' does), or none."
        )
    if chosen != RECONSTRUCTION:
        return
    other = {key: value for key, value in (("engine", cfg.engine), ("aggregator", cfg.aggregator),
                                            ("compress", cfg.compress)) if value != _DEFAULTS[key]}
    if other:
        raise ConfigError(
            f"fed_recon runs on the 'tff' engine with the plain mean of item-embedding updates. Got {other}. "
            "Fix: engine='tff', aggregator='mean', compress=false."
        )
    if cfg.effective_split != "by_client":
        raise ConfigError(
            f"fed_recon evaluates on users it never trained on (as the tutorial splits users into "
            f"train/val/test). Got split={cfg.split!r}. Fix: split='by_client'."
        )

def _check_text(cfg: ExperimentConfig) -> None:
    """Plays, warm start and pretraining (the text-generation recipe)."""
    if cfg.plays and cfg.dataset != "shakespeare":
        raise ConfigError(f"plays selects Shakespeare plays. Got dataset={cfg.dataset!r} with plays="
                          f"{cfg.plays!r}. Fix: clear plays, or set dataset='shakespeare'.")
    if cfg.pretrain_plays:
        if cfg.model not in TEXT_MODELS or cfg.dataset != "shakespeare":
            raise ConfigError(f"pretrain_plays pretrains a text model on Shakespeare plays. Got model={cfg.model!r}, "
                              f"dataset={cfg.dataset!r}. Fix: model='char_gru' and dataset='shakespeare', or "
                              "clear pretrain_plays.")
        if not cfg.warm_start:
            raise ConfigError("pretrain_plays needs warm_start, the registered model (models:/<name>@<alias>) the "
                              "pretrained model is registered as and fine-tuning starts from. Got warm_start=''. "
                              "Fix: e.g. warm_start='models:/fedflow-char-gru@pretrained'.")
        if not cfg.parsed_plays:
            raise ConfigError(f"pretrain_plays must be disjoint from the fine-tuning plays, but plays='' stages "
                              f"every play, pretrain_plays={cfg.pretrain_plays!r} included. Fix: list the "
                              "fine-tuning plays in plays.")
        shared = sorted(set(cfg.parsed_plays) & set(cfg.parsed_pretrain_plays))
        if shared:
            raise ConfigError(f"pretrain_plays and plays must be disjoint (the warm start must not have seen the "
                              f"fine-tuning clients' text). Got {shared} in both. Fix: remove them from one list.")
    if cfg.model in TEXT_MODELS and cfg.engine != "tff":
        raise ConfigError(f"model {cfg.model!r} trains on the 'tff' engine only. Got engine={cfg.engine!r}. "
                          "Fix: engine='tff'.")


def check_trainable(cfg: ExperimentConfig) -> None:
    """Raises ConfigError when the training engine cannot train ``model`` on this data set's kind
    (known before staging for the named data sets; path sources are checked after staging)."""
    kind = DATASET_KINDS.get(cfg.dataset)
    if cfg.algorithm == SPARSE_SELECT["algorithm"]:  # check() saw to its model and shakespeare
        return
    if cfg.algorithm == RECONSTRUCTION["algorithm"]:  # __post_init__ checked that it has movielens
        return
    if cfg.model in TEXT_MODELS or kind == "text":
        if cfg.model not in TEXT_MODELS or kind != "text":
            raise ConfigError(
                f"model {cfg.model!r} does not fit dataset {cfg.dataset!r} ({kind or 'path'} data): "
                f"text data trains the text models {list(TEXT_MODELS)}, and they train on text only. "
                "Fix: model='char_gru' with dataset='shakespeare' (recipe text_generation), or stage and validate "
                "only with the federated_data DAG."
            )
        return
    if kind in ("text", "ratings"):
        raise ConfigError(
            f"model {cfg.model!r} classifies images and feature vectors; dataset {cfg.dataset!r} is {kind} "
            "data. Fix: model='char_gru' for text (recipe text_generation), algorithm='fed_recon' with model "
            "'matrix_factorization' for ratings (recipe reconstruction), or stage and validate only with the "
            f"federated_data DAG (make stage DATASET={cfg.dataset})."
        )
