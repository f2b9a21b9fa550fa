"""The config rules of sparse federated learning (``algorithm: sparse_select``, trainer/sparse_training.py), run by
``tasks.config_checks.check``: the algorithm, its model ``bag_of_words_logistic`` and the ``shakespeare`` roles go
together, on the tff engine with its own sparse sum (no other aggregator), and the tags are the listed plays.

Plain Python: no Airflow, no TensorFlow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.config import _DEFAULTS, SPARSE_SELECT, ConfigError

if TYPE_CHECKING:
    from tasks.config import ExperimentConfig


def check(cfg: ExperimentConfig) -> None:
    """Raises ConfigError for the first sparse_select rule ``cfg`` breaks (nothing when it does not use it)."""
    chosen = {key: getattr(cfg, key) for key in SPARSE_SELECT}
    if chosen != SPARSE_SELECT and any(
        chosen[key] == value for key, value in SPARSE_SELECT.items() if key != "dataset"
    ):
        raise ConfigError(
            f"algorithm 'sparse_select' trains model 'bag_of_words_logistic' on dataset 'shakespeare', and only "
            f"together. Got {chosen}. Fix: set all three (recipe 'sparse_federated_learning' does), or none."
        )
    if chosen != SPARSE_SELECT:
        return
    other = {
        key: value
        for key, value in (("engine", cfg.engine), ("aggregator", cfg.aggregator), ("compress", cfg.compress))
        if value != _DEFAULTS[key]
    }
    if cfg.learning_process:
        other["learning_process"] = cfg.learning_process
    if other:
        raise ConfigError(
            f"sparse_select runs its own round on the 'tff' engine: federated_select down, a sparse sum of the "
            f"selected rows' updates up. Got {other}. Fix: engine='tff', aggregator='mean', compress=false, "
            "learning_process=''."
        )
    if len(cfg.parsed_plays) < 2:
        raise ConfigError(
            f"sparse_select predicts which of the listed plays a line is from, so plays must name at least two. "
            f"Got plays={cfg.plays!r}. Fix: e.g. plays='hamlet,macbeth,twelfth_night'."
        )
    if cfg.max_tokens_per_client > cfg.vocab_size + 1:
        raise ConfigError(
            f"max_tokens_per_client must be <= vocab_size + 1 = {cfg.vocab_size + 1} (the model's rows). Got "
            f"{cfg.max_tokens_per_client}. Fix: lower max_tokens_per_client or raise vocab_size."
        )
