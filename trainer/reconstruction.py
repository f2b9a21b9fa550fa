"""Federated Reconstruction of a matrix factorisation: TFF's tutorial
federated_reconstruction_for_matrix_factorization as a training path of the engine (``algorithm: fed_recon``).

Singhal et al. 2021, "Federated Reconstruction: Partially Local Federated Learning". The model predicts a
rating as the dot product of a user embedding and an item embedding. The item embeddings are global: the
server holds them, broadcasts them and averages the clients' updates (``tff.learning.algorithms.build_fed_recon``).
The user embedding is local: every client builds a fresh one, reconstructs it from half of its batches with the
item embeddings frozen, trains the item embeddings on the other half, and sends only the item-embedding update.
So the server state holds item embeddings and nothing else (a test inspects it), and users never seen in
training are served by reconstructing their embedding from a few ratings (``build_fed_recon_eval``).

Clients are MovieLens users, split by user as the tutorial splits them: the by-client test split's users are
the test users, the last ``heldout_clients`` training users are validation users (they never train), the rest
train. Every round is a function of (seed, round): the sampled users and each user's batch order; the user
embedding starts from a seeded initializer. A run resumed from a checkpoint equals an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import time
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks import atomic, metrics_log, shards
from tasks.checkpoints import CheckpointStore
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from trainer import algorithms, lifecycle, recipe_results

log = logging.getLogger("fedflow.trainer")
ReconstructionModel = tff.learning.models.ReconstructionModel
# The tutorial keeps at most 300 ratings per user (max_examples_per_user); here the user's first 300 in time.
MAX_RATINGS_PER_USER = 300
# |y - y_hat| <= 0.5: the prediction rounds to the true rating (the tutorial's RatingAccuracy).
RATING_TOLERANCE = 0.5


class Error(Exception):
    """Base class for reconstruction errors."""


@dataclasses.dataclass
class ReconExperiment:
    """Everything a fed_recon run needs, built once per trainer process."""

    cfg: ExperimentConfig
    paths: RunPaths
    manifest: shards.Manifest
    num_items: int
    model_fn: object
    process: tff.learning.templates.LearningProcess
    evaluation: tff.learning.templates.LearningProcess
    checkpoints: CheckpointStore


# -- the model (the tutorial's, with a seeded user-embedding initializer) ----------------------------------
class UserEmbedding(tf.keras.layers.Layer):
    """One user's ``embedding_dim``-vector: the local (never aggregated) part of the model."""

    def __init__(self, num_latent_factors: int, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_latent_factors, self.seed = num_latent_factors, seed

    def build(self, input_shape) -> None:
        # The tutorial's 'uniform' initializer (U(-0.05, 0.05)), seeded so that a round is reproducible.
        self.embedding = self.add_weight(
            shape=(1, self.num_latent_factors),
            dtype=tf.float32,
            initializer=tf.keras.initializers.RandomUniform(-0.05, 0.05, seed=self.seed),
            name="UserEmbeddingKernel",
        )
        super().build(input_shape)

    def call(self, inputs):  # noqa: ARG002 - the user embedding does not depend on the item
        return self.embedding


def build_keras_model(num_items: int, embedding_dim: int, seed: int = 0):
    """(Keras model item id -> predicted rating, global layers, local layers), as the tutorial builds it."""
    item_input = tf.keras.layers.Input(shape=[1], name="Item", dtype=tf.int64)
    item_embedding = tf.keras.layers.Embedding(num_items, embedding_dim, name="ItemEmbedding")
    item_vector = tf.keras.layers.Flatten(name="FlattenItems")(item_embedding(item_input))
    user_embedding = UserEmbedding(embedding_dim, seed, name="UserEmbedding")
    prediction = tf.keras.layers.Dot(1, normalize=False, name="Dot")([user_embedding(item_input), item_vector])
    return tf.keras.Model(inputs=item_input, outputs=prediction), [item_embedding], [user_embedding]


INPUT_SPEC = collections.OrderedDict(
    x=tf.TensorSpec(shape=[None, 1], dtype=tf.int64), y=tf.TensorSpec(shape=[None, 1], dtype=tf.float32)
)


def tff_model_fn(num_items: int, embedding_dim: int, seed: int = 0):
    """A no-argument constructor of the ``tff.learning.models.ReconstructionModel``."""

    def model_fn() -> ReconstructionModel:
        model, global_layers, local_layers = build_keras_model(num_items, embedding_dim, seed)
        return ReconstructionModel.from_keras_model_and_layers(
            keras_model=model, global_layers=global_layers, local_layers=local_layers, input_spec=INPUT_SPEC
        )

    return model_fn


class RatingAccuracy(tf.keras.metrics.Mean):
    """The share of predictions within 0.5 of the rating (the tutorial's metric)."""

    def __init__(self, name: str = "rating_accuracy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(
            tf.less_equal(tf.abs(y_true - y_pred), RATING_TOLERANCE), sample_weight=sample_weight
        )


def loss_fn() -> tf.keras.losses.Loss:
    return tf.keras.losses.MeanSquaredError()


def metrics_fn() -> list[tf.keras.metrics.Metric]:
    return [RatingAccuracy()]


def dataset_split_fn(cfg: ExperimentConfig):
    """Even batches reconstruct the user embedding (``reconstruction_epochs`` passes), odd batches train or
    are scored: TFF's default split, the tutorial's."""
    return ReconstructionModel.build_dataset_split_fn(recon_epochs=cfg.reconstruction_epochs, split_dataset=True)


def build_learning_process(cfg: ExperimentConfig, model_fn) -> tff.learning.templates.LearningProcess:
    """``build_fed_recon`` with the config's client, server and reconstruction SGD (the tutorial: 0.5, 1.0, 0.1)."""
    return tff.learning.algorithms.build_fed_recon(
        model_fn,
        loss_fn=loss_fn,
        metrics_fn=metrics_fn,
        server_optimizer_fn=algorithms.server_optimizer(cfg),
        client_optimizer_fn=algorithms.client_optimizer(cfg),
        reconstruction_optimizer_fn=tff.learning.optimizers.build_sgdm(cfg.reconstruction_learning_rate),
        dataset_split_fn=dataset_split_fn(cfg),
    )


def build_evaluation(cfg: ExperimentConfig, model_fn) -> tff.learning.templates.LearningProcess:
    return tff.learning.algorithms.build_fed_recon_eval(
        model_fn,
        loss_fn=loss_fn,
        metrics_fn=metrics_fn,
        reconstruction_optimizer_fn=tff.learning.optimizers.build_sgdm(cfg.reconstruction_learning_rate),
        dataset_split_fn=dataset_split_fn(cfg),
    )


def num_items(manifest: shards.Manifest) -> int:
    """Rows of the item-embedding table: the largest item id + 1 (MovieLens ids start at 1)."""
    source = manifest.data.get("source") or {}
    if "max_item_id" not in source:
        raise Error(
            f"{manifest.root} does not record max_item_id (a ratings data set staged by the movielens "
            "source does). Fix: stage the data set with dataset='movielens'."
        )
    return int(source["max_item_id"]) + 1


def load_experiment(paths: RunPaths, cfg: ExperimentConfig, manifest: shards.Manifest) -> ReconExperiment:
    if manifest.kind != "ratings":
        raise Error(
            f"fed_recon factorises a ratings data set; {manifest.root} holds {manifest.kind} data. "
            "Fix: dataset='movielens'."
        )
    items = num_items(manifest)
    model_fn = tff_model_fn(items, cfg.embedding_dim, cfg.seed)
    process = build_learning_process(cfg, model_fn)
    evaluation = build_evaluation(cfg, model_fn)
    checkpoints = CheckpointStore(paths.checkpoints, keep=cfg.keep_checkpoints)
    return ReconExperiment(cfg, paths, manifest, items, model_fn, process, evaluation, checkpoints)


# -- users' ratings as client datasets ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class UserRatings:
    user_id: str
    items: np.ndarray  # int64 [n]
    ratings: np.ndarray  # float32 [n]


def read_user(manifest: shards.Manifest, split: str, user_id: str) -> UserRatings:
    cols = manifest.read_columns(split, user_id, ["item_id", "rating"])
    keep = slice(0, MAX_RATINGS_PER_USER)
    return UserRatings(user_id, cols["item_id"][keep].astype(np.int64), cols["rating"][keep].astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Users:
    """The run's users by role: ``train`` users train, ``val`` (the last heldout_clients training users) and
    ``test`` (the by-client test split) are only evaluated."""

    train: dict[str, UserRatings]
    val: dict[str, UserRatings]
    test: dict[str, UserRatings]
    index: dict[str, int]  # a user's seed index (its position in the staged training list; test users after)

    @classmethod
    def read(cls, exp: ReconExperiment) -> Users:
        train_ids, test_ids = exp.manifest.client_ids("train"), exp.manifest.client_ids("test")
        if not test_ids:
            raise Error(f"{exp.manifest.root} has no test users. Fix: split='by_client'.")
        cut = len(train_ids) - exp.cfg.heldout_clients
        read = functools.partial(read_user, exp.manifest)
        return cls(
            {u: read("train", u) for u in train_ids[:cut]},
            {u: read("train", u) for u in train_ids[cut:]},
            {u: read("test", u) for u in test_ids},
            {u: i for i, u in enumerate(train_ids + test_ids)},
        )


def user_dataset(user: UserRatings, order: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """The user's ratings in ``order``, batched: ``x`` item ids [b, 1], ``y`` ratings [b, 1] (the tutorial's)."""
    return tf.data.Dataset.from_tensor_slices(
        collections.OrderedDict(x=user.items[order].reshape(-1, 1), y=user.ratings[order].reshape(-1, 1))
    ).batch(batch_size)


def train_order(cfg: ExperimentConfig, user: UserRatings, index: int, round_num: int) -> np.ndarray:
    return np.random.default_rng([cfg.seed, round_num, 2, index]).permutation(len(user.ratings))


def eval_order(cfg: ExperimentConfig, user: UserRatings, index: int) -> np.ndarray:
    """An evaluated user's fixed order: the same reconstruction and scored halves at every evaluation."""
    return np.random.default_rng([cfg.seed, 3, index]).permutation(len(user.ratings))


def scored_ratings(cfg: ExperimentConfig, users: dict[str, UserRatings], index: dict[str, int]) -> np.ndarray:
    """The ratings ``build_fed_recon_eval`` scores: the odd batches of each user's evaluation order (the even
    ones reconstruct the user embedding). The trivial predictors are scored on exactly these."""
    scored = []
    for user_id, user in users.items():
        ordered = user.ratings[eval_order(cfg, user, index[user_id])]
        batches = np.arange(len(ordered)) // cfg.batch_size
        scored.append(ordered[batches % 2 == 1])
    return np.concatenate(scored) if scored else np.zeros(0, np.float32)


# -- state, checkpoints, rounds -----------------------------------------------------------------------------
def initial_state(exp: ReconExperiment):
    """Round-0 state: item embeddings drawn from the experiment seed (Keras' U(-0.05, 0.05), as the tutorial)."""
    state = exp.process.initialize()
    tf.keras.utils.set_random_seed(exp.cfg.seed)
    _, global_layers, _ = build_keras_model(exp.num_items, exp.cfg.embedding_dim, exp.cfg.seed)
    global_layers[0].build((None, 1))
    weights = tff.learning.models.ModelWeights(
        trainable=[v.numpy() for v in global_layers[0].trainable_weights], non_trainable=[]
    )
    return exp.process.set_model_weights(state, weights)


def load_state(exp: ReconExperiment, round_num: int | None = None):
    latest = exp.checkpoints.load_latest() if round_num is None else exp.checkpoints.load(round_num)
    return tf.nest.pack_sequence_as(exp.process.initialize(), latest.leaves)


def evaluate(
    exp: ReconExperiment, state, users: dict[str, UserRatings], index: dict[str, int], prefix: str
) -> dict[str, float]:
    """``build_fed_recon_eval`` over ``users``: each reconstructs its embedding from its even batches and is
    scored on its odd ones; MSE and rating accuracy pooled over the scored ratings."""
    eval_state = exp.evaluation.set_model_weights(exp.evaluation.initialize(), exp.process.get_model_weights(state))
    datasets = [user_dataset(u, eval_order(exp.cfg, u, index[uid]), exp.cfg.batch_size) for uid, u in users.items()]
    metrics = exp.evaluation.next(eval_state, datasets).metrics["client_work"]["eval"]["current_round_metrics"]
    return {
        f"{prefix}_mse": float(metrics["loss"]),
        f"{prefix}_rating_accuracy": float(metrics["rating_accuracy"]),
        f"{prefix}_examples": int(len(scored_ratings(exp.cfg, users, index))),
    }


def generic_names(row: dict) -> dict[str, float]:
    """The same values under the engine's generic names (plots, the run's headline): loss = MSE, accuracy =
    rating accuracy, held-out clients = the validation users."""
    generic = {
        "train_rating_accuracy": "train_accuracy",
        "val_mse": "heldout_loss",
        "val_rating_accuracy": "heldout_accuracy",
        "test_mse": "test_loss",
        "test_rating_accuracy": "test_accuracy",
    }
    return {name: row[key] for key, name in generic.items() if key in row}


def train_until_round(exp: ReconExperiment, until_round: int) -> int:
    """Brings the run to ``until_round`` (idempotent); the chunk reaching the last round also exports."""
    cfg = exp.cfg
    if not 1 <= until_round <= cfg.rounds:
        raise Error(f"until_round must be in [1, rounds={cfg.rounds}]. Got {until_round}.")
    from trainer import program  # noqa: PLC0415 - program imports this module

    state, start_round = program.restore_or_start(exp, initial_state)
    dropped = metrics_log.truncate_after(exp.paths.metrics, start_round)
    if dropped:
        log.info("Dropped %d metrics rows written after the checkpoint of round %d", dropped, start_round)
    if start_round < until_round:
        _rounds(exp, state, start_round, until_round)
    else:
        log.info("Already at round %d >= %d; nothing to do", start_round, until_round)
    if until_round == cfg.rounds:
        export(exp)
    return max(start_round, until_round)


def _rounds(exp: ReconExperiment, state, start_round: int, until_round: int) -> None:
    from trainer import program  # noqa: PLC0415 - program imports this module

    cfg = exp.cfg
    users = Users.read(exp)
    train_ids = list(users.train)
    log.info(
        "fed_recon rounds %d-%d: %d train, %d validation, %d test users",
        start_round + 1,
        until_round,
        len(users.train),
        len(users.val),
        len(users.test),
    )
    for round_num in range(start_round + 1, until_round + 1):
        start = time.perf_counter()
        sampled = program.sample_clients(cfg, round_num, train_ids)
        row = {"round": round_num, "clients_sampled": len(sampled), "engine": "tff"}
        if sampled:
            datasets = [
                user_dataset(
                    users.train[u], train_order(cfg, users.train[u], users.index[u], round_num), cfg.batch_size
                )
                for u in sampled
            ]
            output = exp.process.next(state, datasets)
            state, train = output.state, output.metrics["client_work"]["train"]
            row.update(
                train_loss=float(train["loss"]),
                train_mse=float(train["loss"]),
                train_rating_accuracy=float(train["rating_accuracy"]),
            )
        if round_num % cfg.eval_every == 0 or round_num == cfg.rounds:
            if users.val:
                row.update(evaluate(exp, state, users.val, users.index, "val"))
            row.update(evaluate(exp, state, users.test, users.index, "test"))
        row.update(generic_names(row))
        row["round_seconds"] = time.perf_counter() - start
        row["wall_time"] = time.time()
        metrics_log.append_row(exp.paths.metrics, row)
        exp.checkpoints.save(round_num, tf.nest.flatten(state))
        log.info(
            "round %d/%d mse=%.4f rating_accuracy=%.4f%s seconds=%.2f",
            round_num,
            cfg.rounds,
            row.get("train_mse", float("nan")),
            row.get("train_rating_accuracy", float("nan")),
            f" test_mse={row['test_mse']:.4f} test_rating_accuracy={row['test_rating_accuracy']:.4f}"
            if "test_mse" in row
            else "",
            row["round_seconds"],
        )
        lifecycle.maybe_inject_fault(round_num)


# -- export -------------------------------------------------------------------------------------------------
def item_embedding_model(exp: ReconExperiment, state) -> tf.keras.Model:
    """The server's model: item id -> item embedding (a user's embedding never leaves its client, so a rating
    is predicted after reconstructing it from the user's own ratings)."""
    item = tf.keras.layers.Input(shape=[1], dtype=tf.int64, name="item_id")
    embedding = tf.keras.layers.Embedding(exp.num_items, exp.cfg.embedding_dim, name="ItemEmbedding")
    model = tf.keras.Model(item, tf.keras.layers.Flatten()(embedding(item)), name="item_embeddings")
    embedding.set_weights(list(exp.process.get_model_weights(state).trainable))
    return model


def export(exp: ReconExperiment) -> dict:
    """Evaluates the final item embeddings on the test users (``final.json``) and saves them as an MLflow
    TensorFlow model (item id -> embedding), which evaluate_and_register logs and registers."""
    import mlflow.tensorflow  # noqa: PLC0415 - only the exporting chunk needs MLflow
    from mlflow.models import infer_signature  # noqa: PLC0415

    latest = exp.checkpoints.load_latest()
    if latest is None or latest.round_num != exp.cfg.rounds:
        reached = None if latest is None else latest.round_num
        raise Error(f"The run has reached round {reached} of {exp.cfg.rounds}; train all rounds before exporting.")
    state = load_state(exp)
    users = Users.read(exp)
    metrics = evaluate(exp, state, users.test, users.index, "test")
    if users.val:
        metrics.update(evaluate(exp, state, users.val, users.index, "val"))
    model = item_embedding_model(exp, state)
    example = np.arange(1, 6, dtype=np.int64).reshape(-1, 1)
    tmp = exp.paths.root / f".model-{uuid.uuid4().hex[:8]}"
    mlflow.tensorflow.save_model(
        model,
        tmp,
        signature=infer_signature(example, model(example).numpy()),
        input_example=example,
        pip_requirements=[f"tensorflow=={tf.__version__}"],
    )
    atomic.replace_dir(tmp, exp.paths.model)
    final = {
        "round": latest.round_num,
        **metrics,
        "test_loss": metrics["test_mse"],
        "test_accuracy": metrics["test_rating_accuracy"],
        # what the two headline numbers are here (tasks/steps.headline, tasks/report): not a classifier's
        "test_loss_label": "test MSE",
        "test_accuracy_label": "test rating accuracy (|y - y_hat| <= 0.5)",
        "num_parameters": int(sum(np.size(w) for w in exp.process.get_model_weights(state).trainable)),
    }
    atomic.write_json(exp.paths.final, final)
    recipe_results.measure(exp)
    log.info("Exported the round-%d item embeddings to %s: %s", latest.round_num, exp.paths.model, final)
    return final


# -- the recipe's measurement ---------------------------------------------------------------------------------
def constant_predictor(value: float, ratings: np.ndarray) -> tuple[float, float]:
    """(MSE, rating accuracy) of predicting ``value`` for every rating."""
    return float(np.mean((ratings - value) ** 2)), float(np.mean(np.abs(ratings - value) <= RATING_TOLERANCE))


def measure(exp: ReconExperiment) -> dict[str, float]:
    """The trivial predictors on the same split (fitted on the training users' ratings, scored on the test
    ratings that build_fed_recon_eval scores), and what the server state holds: item embeddings only."""
    users = Users.read(exp)
    train = np.concatenate([u.ratings for u in users.train.values()])
    values, counts = np.unique(train, return_counts=True)
    mean, mode = float(np.mean(train)), float(values[np.argmax(counts)])
    scored = scored_ratings(exp.cfg, users.test, users.index)
    mean_mse, mean_accuracy = constant_predictor(mean, scored)
    mode_mse, mode_accuracy = constant_predictor(mode, scored)
    state_tensors = [np.asarray(leaf) for leaf in tf.nest.flatten(load_state(exp)) if np.ndim(leaf) > 0]
    weights = exp.process.get_model_weights(load_state(exp))
    item_values = exp.num_items * exp.cfg.embedding_dim
    user_shape = tuple(ReconstructionModel.get_local_variables(exp.model_fn()).trainable[0].shape)
    return {
        "global_mean_rating": mean,
        "most_frequent_rating": mode,
        "global_mean_test_mse": mean_mse,
        "global_mean_test_rating_accuracy": mean_accuracy,
        "most_frequent_test_mse": mode_mse,
        "most_frequent_test_rating_accuracy": mode_accuracy,
        "test_ratings_scored": int(len(scored)),
        "server_model_tensors": len(weights.trainable) + len(weights.non_trainable),
        "server_item_embedding_values": int(sum(np.size(w) for w in weights.trainable)),
        "server_state_values_besides_item_embeddings": int(sum(t.size for t in state_tensors) - item_values),
        "server_state_user_embedding_tensors": sum(t.shape == user_shape for t in state_tensors),
        "client_user_embedding_values": int(np.prod(user_shape)),
    }
