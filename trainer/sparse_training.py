"""Sparse federated learning as a training path of the engine (``algorithm: sparse_select``): TFF's tutorial
sparse_federated_learning (trainer/sparse_select.py) on the staged plays (trainer/sparse_data.py).

The server holds one table, ``[vocab_size + 1, plays]``; in a round each sampled role selects the rows of its
``max_tokens_per_client`` most frequent words with ``tff.federated_select``, trains them with SGD on its lines
(``local_epochs`` seeded shuffles) and sends back the change of its real rows, which the server sums sparsely
and averages over the clients. Every round logs what each client downloaded and uploaded against the dense
table's size, and every ``eval_every`` rounds the tutorial's metrics (binary cross-entropy, precision, AUC,
recall@k) of the held-out and the test roles. The state is the table alone: it starts at zeros (the tutorial's
initializer) and each round is a function of (seed, round) (the sampled roles and their line orders), so a run
resumed from a checkpoint equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

import numpy as np
import tensorflow as tf

from tasks import atomic, metrics_log, shards
from tasks.checkpoints import CheckpointStore
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from trainer import lifecycle, recipe_results, sparse_data, sparse_select, sparse_tutorial

log = logging.getLogger("fedflow.trainer")
TOP_K = (1, 5)  # recall@1 is the top-1 accuracy of the one-tag (one play) examples
FEDERATED_SELECT_EXAMPLE = "a,b;b,c;c,a"  # the federated_select tutorial's printed output, joined by ';'


class Error(Exception):
    """Base class for sparse-training errors."""


class SparseProcess:
    """The round as a process: ``initialize()`` is the zero table, ``next(table, datasets)`` one round (returns
    the new table and each client's stats). What :func:`trainer.program.restore_or_start` needs of a process."""

    def __init__(self, problem: sparse_select.SparseProblem) -> None:
        self.problem = problem
        self.round = sparse_select.build_sparse_round(problem)

    def initialize(self) -> np.ndarray:
        return np.zeros((self.problem.vocab_size, self.problem.num_tags), np.float32)

    def next(self, table: np.ndarray, datasets: list) -> tuple[np.ndarray, list[dict]]:
        new_table, stats = self.round(table, datasets)
        return np.asarray(new_table, np.float32), [{k: np.asarray(v).item() for k, v in s.items()} for s in stats]


@dataclasses.dataclass
class SparseExperiment:
    """Everything a sparse_select run needs, built once per trainer process."""

    cfg: ExperimentConfig
    paths: RunPaths
    manifest: shards.Manifest
    data: sparse_data.PlayLines
    problem: sparse_select.SparseProblem
    process: SparseProcess
    checkpoints: CheckpointStore


def load_experiment(paths: RunPaths, cfg: ExperimentConfig, manifest: shards.Manifest) -> SparseExperiment:
    data = sparse_data.PlayLines.read(manifest, cfg)
    problem = sparse_select.SparseProblem(
        vocab_size=data.vocabulary.size,
        num_tags=len(data.plays),
        max_tokens=cfg.max_tokens_per_client,
        client_learning_rate=cfg.client_learning_rate,
        server_learning_rate=cfg.server_learning_rate,
    )
    checkpoints = CheckpointStore(paths.checkpoints, keep=cfg.keep_checkpoints)
    return SparseExperiment(cfg, paths, manifest, data, problem, SparseProcess(problem), checkpoints)


def client_dataset(exp: SparseExperiment, client: sparse_data.RoleLines, round_num: int):
    """The client's lines for one round: ``local_epochs`` seeded shuffles, batched."""
    rng = np.random.default_rng([exp.cfg.seed, round_num, 2, exp.data.index[client.client_id]])
    order = np.concatenate([rng.permutation(client.num_examples) for _ in range(exp.cfg.local_epochs)])
    return sparse_select.batches(
        client.token_ids[order], client.tags[order], exp.problem.vocab_size, exp.cfg.batch_size
    )


def bytes_row(problem: sparse_select.SparseProblem, stats: list[dict]) -> dict[str, float]:
    """The round's communication, measured on the tensors the clients received and sent, and how many clients
    moved other than selected rows x row size (``max_tokens`` rows down, the padding included; the real rows
    and their int32 keys up)."""
    down = np.array([s["downloaded_bytes"] for s in stats], float)
    up = np.array([s["uploaded_bytes"] for s in stats], float)
    rows = np.array([s["selected_rows"] for s in stats], float)
    expected_up = rows * (problem.row_bytes + sparse_select.KEY_BYTES)
    mismatches = int(np.sum((down != problem.max_tokens * problem.row_bytes) | (up != expected_up)))
    dense = problem.dense_model_bytes
    return {
        "bytes_downloaded_per_client": float(down.mean()),
        "bytes_uploaded_per_client": float(up.mean()),
        "bytes_uploaded_max": float(up.max()),
        "dense_model_bytes": dense,
        "download_fraction": float(down.mean() / dense),
        "upload_fraction": float(up.mean() / dense),
        "selected_rows_per_client": float(rows.mean()),
        "bytes_mismatch_clients": mismatches,
    }


def top_k(exp: SparseExperiment) -> tuple[int, ...]:
    """The recall@k reported: :data:`TOP_K`, those not above the number of plays."""
    return tuple(k for k in TOP_K if k <= exp.problem.num_tags)


def evaluate(exp: SparseExperiment, table: np.ndarray, clients: dict, prefix: str) -> dict[str, float]:
    ids, tags = sparse_data.pooled(clients)
    metrics = sparse_select.evaluate(table, ids, tags, top_k(exp))
    row = {f"{prefix}_{k}": v for k, v in metrics.items()}
    row[f"{prefix}_accuracy"] = metrics["recall_at_1"]
    row[f"{prefix}_examples"] = int(len(tags))
    return row


def train_until_round(exp: SparseExperiment, until_round: int) -> int:
    """Brings the run to ``until_round`` (idempotent); the chunk reaching the last round also exports."""
    from trainer import program  # noqa: PLC0415 - program imports this module

    cfg = exp.cfg
    if not 1 <= until_round <= cfg.rounds:
        raise Error(f"until_round must be in [1, rounds={cfg.rounds}]. Got {until_round}.")
    table, start_round = program.restore_or_start(exp, lambda e: e.process.initialize())
    dropped = metrics_log.truncate_after(exp.paths.metrics, start_round)
    if dropped:
        log.info("Dropped %d metrics rows written after the checkpoint of round %d", dropped, start_round)
    log.info(
        "sparse_select: %d words (+1 OOV) x %d plays = %d bytes dense; %d rows per client; %d train, "
        "%d held-out, %d test roles",
        len(exp.data.vocabulary.words),
        len(exp.data.plays),
        exp.problem.dense_model_bytes,
        exp.problem.max_tokens,
        len(exp.data.train),
        len(exp.data.heldout),
        len(exp.data.test),
    )
    for round_num in range(start_round + 1, until_round + 1):
        table = _round(exp, table, round_num)
    if until_round == cfg.rounds:
        export(exp)
    return max(start_round, until_round)


def _round(exp: SparseExperiment, table: np.ndarray, round_num: int) -> np.ndarray:
    from trainer import program  # noqa: PLC0415 - program imports this module

    cfg, start = exp.cfg, time.perf_counter()
    sampled = program.sample_clients(cfg, round_num, list(exp.data.train))
    row = {"round": round_num, "clients_sampled": len(sampled), "engine": "tff"}
    if sampled:
        table, stats = exp.process.next(table, [client_dataset(exp, exp.data.train[c], round_num) for c in sampled])
        examples = sum(s["examples"] for s in stats)
        row.update(
            train_loss=sum(s["loss_sum"] for s in stats) / max(examples, 1),
            train_examples=examples,
            **bytes_row(exp.problem, stats),
        )
    if round_num % cfg.eval_every == 0 or round_num == cfg.rounds:
        if exp.data.heldout:
            row.update(evaluate(exp, table, exp.data.heldout, "heldout"))
        row.update(evaluate(exp, table, exp.data.test, "test"))
    row["round_seconds"] = time.perf_counter() - start
    row["wall_time"] = time.time()
    metrics_log.append_row(exp.paths.metrics, row)
    exp.checkpoints.save(round_num, [table])
    log.info(
        "round %d/%d loss=%.4f down=%.0f B up=%.0f B (dense %d B)%s seconds=%.2f",
        round_num,
        cfg.rounds,
        row.get("train_loss", float("nan")),
        row.get("bytes_downloaded_per_client", 0),
        row.get("bytes_uploaded_per_client", 0),
        exp.problem.dense_model_bytes,
        f" test_accuracy={row['test_accuracy']:.4f} test_auc={row['test_auc']:.4f}" if "test_auc" in row else "",
        row["round_seconds"],
    )
    lifecycle.maybe_inject_fault(round_num)
    return table


def load_table(exp: SparseExperiment) -> tuple[np.ndarray, int]:
    latest = exp.checkpoints.load_latest()
    if latest is None or latest.round_num != exp.cfg.rounds:
        reached = None if latest is None else latest.round_num
        raise Error(f"The run has reached round {reached} of {exp.cfg.rounds}; train all rounds before exporting.")
    return np.asarray(latest.leaves[0], np.float32), latest.round_num


def keras_model(exp: SparseExperiment, table: np.ndarray) -> tf.keras.Model:
    """The server's model for serving: a line's multi-hot words ``[vocab_size + 1]`` -> each play's probability
    (the tutorial's Dense layer with sigmoid, no bias)."""
    inputs = tf.keras.layers.Input(shape=[exp.problem.vocab_size], dtype=tf.float32, name="words")
    dense = tf.keras.layers.Dense(exp.problem.num_tags, activation="sigmoid", use_bias=False, name="plays")
    model = tf.keras.Model(inputs, dense(inputs), name="bag_of_words_logistic")
    dense.set_weights([table])
    return model


def export(exp: SparseExperiment) -> dict:
    """Scores the final table on the test roles (``final.json``), saves it as an MLflow TensorFlow model and the
    vocabulary and plays under ``artifacts/`` (logged with the run), then the recipe's measurement."""
    import mlflow.tensorflow  # noqa: PLC0415 - only the exporting chunk needs MLflow
    from mlflow.models import infer_signature  # noqa: PLC0415

    table, round_num = load_table(exp)
    metrics = evaluate(exp, table, exp.data.test, "test")
    if exp.data.heldout:
        metrics.update(evaluate(exp, table, exp.data.heldout, "heldout"))
    model = keras_model(exp, table)
    example = np.zeros((2, exp.problem.vocab_size), np.float32)
    example[0, :3] = example[1, 3:9] = 1.0
    tmp = exp.paths.root / f".model-{uuid.uuid4().hex[:8]}"
    mlflow.tensorflow.save_model(
        model,
        tmp,
        signature=infer_signature(example, model(example).numpy()),
        pip_requirements=[f"tensorflow=={tf.__version__}"],
    )
    atomic.replace_dir(tmp, exp.paths.model)
    artifacts = exp.paths.root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "vocabulary.txt").write_text("\n".join([*exp.data.vocabulary.words, "<oov>"]) + "\n")
    (artifacts / "plays.txt").write_text("\n".join(exp.data.plays) + "\n")
    final = {
        "round": round_num,
        **metrics,
        "num_parameters": int(table.size),
        "dense_model_bytes": exp.problem.dense_model_bytes,
    }
    atomic.write_json(exp.paths.final, final)
    recipe_results.measure(exp)
    log.info("Exported the round-%d table to %s: %s", round_num, exp.paths.model, final)
    return final


# -- the recipe's measurement ---------------------------------------------------------------------------------
SELECTION_CLIENTS = 10


def measure(exp: SparseExperiment) -> dict[str, float]:
    """The federated_select tutorial's example; the sparse tutorial's toy run against its 12 printed numbers;
    what federated_select delivered to up to 10 of the last round's roles against ``table[keys]`` (the final
    table); every round's byte accounting; and the trivial baseline (each play's training share) on the test."""
    cfg = exp.cfg
    from trainer import program  # noqa: PLC0415 - program imports this module

    table, _ = load_table(exp)
    toy = sparse_tutorial.run()
    differences = [
        abs(ours[k] - printed[k])
        for ours, printed in zip(toy["after"], sparse_tutorial.PRINTED_AFTER, strict=True)
        for k in printed
    ]
    last = program.sample_clients(cfg, cfg.rounds, list(exp.data.train))[:SELECTION_CLIENTS] or list(exp.data.train)[:1]
    selection = sparse_select.build_selection(exp.problem)(
        table, [client_dataset(exp, exp.data.train[c], cfg.rounds) for c in last]
    )
    checked = sparse_select.check_selection(table, selection)
    rows = metrics_log.read_rows(exp.paths.metrics)
    ids, tags = sparse_data.pooled(exp.data.test)
    prior = sparse_select.score(sparse_data.prior_predictor(exp.data.train, exp.data.test), tags, top_k(exp))
    return {
        "federated_select_example": ";".join(sparse_select.federated_select_example()),
        "tutorial_metrics_compared": len(differences),
        "tutorial_max_metric_difference": float(max(differences)),
        **{f"tutorial_client{i + 1}_{k}": v for i, after in enumerate(toy["after"]) for k, v in after.items()},
        **checked,
        "selection_clients_not_exact": checked["selection_clients_checked"] - checked["selection_clients_exact"],
        "selection_clients_bytes_mismatch": (
            checked["selection_clients_checked"] - checked["selection_clients_bytes_match"]
        ),
        "bytes_mismatch_client_rounds": int(sum(r.get("bytes_mismatch_clients", 0) for r in rows)),
        "max_download_fraction": float(
            max((r["download_fraction"] for r in rows if "download_fraction" in r), default=float("nan"))
        ),
        **{f"prior_test_{k}": v for k, v in prior.items()},
        "test_examples": int(len(tags)),
        "vocabulary_rows": exp.problem.vocab_size,
        "plays": len(exp.data.plays),
        "test_token_rows_per_line": float(np.mean(np.sum(ids >= 0, axis=1))),
    }
