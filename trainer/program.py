"""The training program: bring a run to round k, and export its final model.

Reads top to bottom: config -> data -> learning process -> checkpoints -> loop. Every round is a
function of (seed, round): the sampled clients, each client's shuffling and the initial weights are
derived from the experiment seed, so a run resumed from any checkpoint ends with the weights of an
uninterrupted one. Per round, the metrics row is appended before the checkpoint is written.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks import atomic, metrics_log, privacy, shards
from tasks.checkpoints import CheckpointStore
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from trainer import (
    aggregators,
    algorithms,
    client_updates,
    devices,
    hybrid,
    lifecycle,
    models,
    recipe_results,
    reconstruction,
    text,
    warm_start,
)

log = logging.getLogger("fedflow.trainer")


class Error(Exception):
    """Base class for trainer errors."""


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, built once per trainer process."""

    cfg: ExperimentConfig
    paths: RunPaths
    manifest: shards.Manifest
    process: tff.learning.templates.LearningProcess
    eval_model: tf.keras.Model
    checkpoints: CheckpointStore
    model_fn: object
    fed_eval: tff.learning.templates.LearningProcess | None = None


def load_experiment(run_dir: Path) -> Experiment | reconstruction.ReconExperiment:
    devices.configure_devices()
    paths = RunPaths(Path(run_dir))
    cfg = ExperimentConfig.read_json(paths.config)
    manifest = shards.Manifest.read(Path(atomic.read_json(paths.staged)["path"]))
    if cfg.algorithm == "fed_recon":  # matrix factorisation of ratings: its own model and loop
        return reconstruction.load_experiment(paths, cfg, manifest)
    if cfg.algorithm == "sparse_select":  # federated_select of a bag-of-words model's rows: its own round
        from trainer import sparse_training  # noqa: PLC0415

        return sparse_training.load_experiment(paths, cfg, manifest)
    input_shape, num_classes = model_input_shape(manifest), model_num_classes(manifest)
    if cfg.aggregator == "secure":
        # The local C++ runtime cannot run secure-sum intrinsics; TFF's test context replaces them with
        # their plain bodies (same bit-width quantisation and modular sums, no cryptography).
        tff.backends.test.set_sync_test_cpp_execution_context()
    elif cfg.max_concurrent_computation_calls:  # 0: the context TFF set at import (no limit)
        tff.backends.native.set_sync_local_cpp_execution_context(
            max_concurrent_computation_calls=cfg.max_concurrent_computation_calls)
    # TFF traces model_fn while building the process; build it before any other Keras model.
    model_fn = models.tff_model_fn(cfg.model, input_shape, num_classes, rnn_units=cfg.rnn_units)
    process = algorithms.build_learning_process(cfg, model_fn)
    fed_eval = tff.learning.algorithms.build_fed_eval(model_fn) if cfg.heldout_clients else None
    eval_model = models.build_keras_model(cfg.model, input_shape, num_classes, rnn_units=cfg.rnn_units)
    checkpoints = CheckpointStore(paths.checkpoints, keep=cfg.keep_checkpoints)
    return Experiment(cfg, paths, manifest, process, eval_model, checkpoints, model_fn, fed_eval)


def model_input_shape(manifest: shards.Manifest) -> tuple[int, ...]:
    """The Keras input shape for the staged ``x``: images get a channel axis when they have none; text
    becomes sequences of character ids (trainer/text.py)."""
    if manifest.kind == "text":
        return (text.SEQ_LENGTH,)
    if manifest.kind not in ("image", "vector") or manifest.schema.label is None:
        raise Error(f"The training engine classifies labelled images or vectors; {manifest.root} holds "
                    f"{manifest.kind} data. Text and ratings train through their recipes.")
    shape = manifest.x_feature.shape
    return (*shape, 1) if manifest.kind == "image" and len(shape) == 2 else shape


def model_num_classes(manifest: shards.Manifest) -> int:
    """Classes of the model's output: the labels, or the characters of the text vocabulary."""
    return text.VOCAB_SIZE if manifest.kind == "text" else manifest.num_classes


def read_client(exp: Experiment, split: str, client_id: str) -> shards.ClientExamples:
    if exp.manifest.kind == "text":
        return text.read_client(exp.manifest, split, client_id)
    return model_examples(exp.manifest, exp.manifest.read_client(split, client_id))


def read_split(exp: Experiment, split: str) -> shards.ClientExamples:
    if exp.manifest.kind == "text":
        return text.read_split(exp.manifest, split)
    return model_examples(exp.manifest, exp.manifest.read_split(split))


def model_examples(manifest: shards.Manifest, examples: shards.ClientExamples) -> shards.ClientExamples:
    """Staged examples as the model takes them: float32 (uint8 images scaled to [0, 1]), shaped."""
    x = examples.x.astype(np.float32) / 255.0 if examples.x.dtype == np.uint8 else examples.x.astype(np.float32, copy=False)
    return shards.ClientExamples(examples.client_id, x.reshape(len(x), *model_input_shape(manifest)), examples.y)


def initial_state(exp: Experiment):
    """Round-0 state with initial weights drawn from the experiment seed (not TFF's unseeded init), or
    the registered model's weights of ``warm_start`` (downloaded into the run directory)."""
    state = exp.process.initialize()
    tf.keras.utils.set_random_seed(exp.cfg.seed)
    seeded = models.build_keras_model(exp.cfg.model, model_input_shape(exp.manifest), model_num_classes(exp.manifest),
                                      rnn_units=exp.cfg.rnn_units)
    weights = tff.learning.models.ModelWeights(
        trainable=[v.numpy() for v in seeded.trainable_weights],
        non_trainable=[v.numpy() for v in seeded.non_trainable_weights],
    )
    if exp.cfg.warm_start:
        weights = warm_start.load_weights(exp.paths.root, seeded, exp.cfg.warm_start)
    return exp.process.set_model_weights(state, weights)


def restore_or_start(exp: Experiment, start: Callable | None = None):
    """Returns (state, round) from the newest valid checkpoint, or round 0 (saved before training):
    ``start(exp)``, by default :func:`initial_state` (fed_recon passes its own)."""
    latest = exp.checkpoints.load_latest()
    if latest is None:
        state = (start or initial_state)(exp)
        exp.checkpoints.save(0, tf.nest.flatten(state))
        log.info("Starting a new run at round 0 (seed %d)", exp.cfg.seed)
        return state, 0
    template = exp.process.initialize()
    state = tf.nest.pack_sequence_as(template, latest.leaves)
    log.info("Resuming from round %d", latest.round_num)
    return state, latest.round_num


def sample_clients(cfg: ExperimentConfig, round_num: int, client_ids: list[str]) -> list[str]:
    """The clients of one round, a function of (seed, round) only.

    ``uniform``: ``clients_per_round`` distinct clients. ``poisson``: each client independently with
    probability q = clients_per_round / num_clients, so a round may have any number, even none.
    ``fixed``: the first ``clients_per_round`` clients, every round.
    """
    if cfg.client_sampling == "fixed":
        return client_ids[: cfg.clients_per_round]
    rng = np.random.default_rng([cfg.seed, round_num, 1])
    if cfg.client_sampling == "poisson":
        q = cfg.clients_per_round / len(client_ids)
        return [cid for cid, u in zip(client_ids, rng.random(len(client_ids)), strict=True) if u < q]
    return [client_ids[i] for i in np.sort(rng.choice(len(client_ids), size=cfg.clients_per_round, replace=False))]


def client_examples(exp: Experiment, client: shards.ClientExamples, client_index: int,
                    round_num: int) -> tuple[np.ndarray, np.ndarray]:
    """The client's examples for one round in training order: ``local_epochs`` seeded shuffles."""
    rng = np.random.default_rng([exp.cfg.seed, round_num, 2, client_index])
    order = np.concatenate([rng.permutation(len(client.y)) for _ in range(exp.cfg.local_epochs)])
    return client.x[order], client.y[order]


def client_dataset(exp: Experiment, client: shards.ClientExamples, client_index: int, round_num: int) -> tf.data.Dataset:
    """:func:`client_examples` batched, as the ``tff`` engine feeds them."""
    x, y = client_examples(exp, client, client_index, round_num)
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(exp.cfg.batch_size)


def round_metrics(metrics) -> dict[str, float]:
    """The training metrics TFF reports for a round, flattened into metrics-row keys."""
    train = metrics["client_work"]["train"]
    row = {
        "train_loss": float(train["loss"]),
        "train_accuracy": float(train["sparse_categorical_accuracy"] if "sparse_categorical_accuracy" in train
                                else train["accuracy"]),  # text: the tutorial's FlattenedCategoricalAccuracy
        "train_examples": int(train["num_examples"]),
    }
    finalizer = metrics.get("finalizer") or {}
    if "update_non_finite" in finalizer:
        row["update_non_finite"] = int(finalizer["update_non_finite"])
    row.update(_flatten("aggregator", metrics.get("aggregator")))
    # A plugged-in process's own client-work measurements (e.g. gradient norms); the built-ins report only "train".
    row.update(_flatten("client_work", {k: v for k, v in metrics["client_work"].items() if k != "train"}))
    return row


def _flatten(prefix: str, value) -> dict[str, float]:
    """Numeric leaves of TFF's nested measurements as ``prefix/a/b`` keys (clip norms, zeroed counts ...)."""
    if isinstance(value, dict):
        flat = {}
        for key, inner in value.items():
            flat.update(_flatten(f"{prefix}/{key}", inner))
        return flat
    if isinstance(value, (int, float, np.number)) or (isinstance(value, np.ndarray) and value.size == 1):
        return {prefix: float(value)}
    return {}


def evaluate_central(exp: Experiment, state, test: shards.ClientExamples) -> dict[str, float]:
    exp.process.get_model_weights(state).assign_weights_to(exp.eval_model)
    if exp.manifest.kind == "text":
        return text.evaluate(exp.eval_model, test)
    logits = exp.eval_model(test.x, training=False)
    loss = float(models.loss_fn()(test.y, logits))
    accuracy = float(np.mean(np.argmax(logits.numpy(), axis=1) == test.y))
    return {"test_loss": loss, "test_accuracy": accuracy}


def evaluate_heldout(exp: Experiment, state, heldout: list[shards.ClientExamples]) -> dict[str, float]:
    """Federated evaluation of the current model on the held-out clients (their examples in order)."""
    eval_state = exp.fed_eval.set_model_weights(exp.fed_eval.initialize(), exp.process.get_model_weights(state))
    datasets = [
        tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=c.x, y=c.y)).batch(exp.cfg.batch_size)
        for c in heldout
    ]
    metrics = exp.fed_eval.next(eval_state, datasets).metrics["client_work"]["eval"]["current_round_metrics"]
    return {
        "heldout_loss": float(metrics["loss"]),
        "heldout_accuracy": float(metrics["sparse_categorical_accuracy"]),
        "heldout_examples": int(metrics["num_examples"]),
    }


def train_until_round(run_dir: Path, until_round: int, engine: str | None = None) -> int:
    """Brings the run in ``run_dir`` to ``until_round``; idempotent. Returns the round reached.

    ``engine`` overrides the config's (both engines share state and checkpoints, so a run may change
    engine between chunks). The chunk that reaches the last round also exports the model, saving the
    export step a process start and a TensorFlow import.
    """
    exp = load_experiment(run_dir)
    engine = engine or exp.cfg.engine
    devices.record_environment(exp.paths, engine)
    if isinstance(exp, reconstruction.ReconExperiment):
        return reconstruction.train_until_round(exp, until_round)  # exports after the last round too
    if exp.cfg.algorithm == "sparse_select":
        from trainer import sparse_training  # noqa: PLC0415

        return sparse_training.train_until_round(exp, until_round)  # exports after the last round too
    reached = _train(exp, until_round, engine)
    if reached == exp.cfg.rounds:
        export_model(exp)
    return reached


# The packages whose versions decide what a run computes; recorded per run for lineage.
class RoundRunner:
    """Runs one round on the chosen engine; the hybrid's next cohort is prepared in a background
    thread while the current round trains (input loading overlaps compute)."""

    def __init__(self, exp: Experiment, engine: str, clients: dict, index: dict, client_ids: list[str], *,
                 lock_step: bool | None = None) -> None:
        if engine not in ("tff", "hybrid", "jax"):
            raise Error(f"engine must be 'tff', 'hybrid' or 'jax'. Got {engine!r}.")
        if engine == "hybrid" and exp.cfg.learning_process:
            raise Error(f"learning_process {exp.cfg.learning_process!r} runs on the 'tff' engine only (the hybrid "
                        "trains the built-in algorithms). Fix: engine='tff'.")
        if engine != "hybrid" and exp.cfg.corrupt_clients:
            raise Error(f"corrupt_clients={exp.cfg.corrupt_clients} corrupts client updates on the hybrid engine only. "
                        f"Got engine={engine!r}. Fix: engine='hybrid' (or corrupt_clients=0).")
        self.exp, self.engine, self.clients, self.index, self.client_ids = exp, engine, clients, index, client_ids
        self.hybrid = (hybrid.HybridEngine(exp.cfg, exp.model_fn, exp.process, lock_step=lock_step)
                       if engine == "hybrid" else None)
        if engine == "jax":  # the hybrid's round with the client work in JAX (trainer/jax_engine.py)
            from trainer import jax_engine  # noqa: PLC0415 - imports jax, needed by this engine only

            self.hybrid = jax_engine.JaxEngine(exp.cfg, exp.model_fn, exp.process)
        self._pool = concurrent.futures.ThreadPoolExecutor(1) if self.hybrid else None
        self._pending: dict[int, concurrent.futures.Future] = {}

    def sampled(self, round_num: int) -> list[str]:
        return sample_clients(self.exp.cfg, round_num, self.client_ids)

    def _cohort(self, round_num: int) -> hybrid.Cohort:
        examples = [client_examples(self.exp, self.clients[cid], self.index[cid], round_num)
                    for cid in self.sampled(round_num)]
        cohort = self.hybrid.prepare(examples, model_input_shape(self.exp.manifest))
        scales = client_updates.update_scales(self.exp.cfg, round_num, len(examples))
        return cohort if scales is None else dataclasses.replace(cohort, update_scales=scales)

    def next(self, state, round_num: int, until_round: int):
        """Returns (state, metrics) after ``round_num``."""
        if self.hybrid is None:
            datasets = [client_dataset(self.exp, self.clients[cid], self.index[cid], round_num)
                        for cid in self.sampled(round_num)]
            output = self.exp.process.next(state, datasets)
            return output.state, output.metrics
        pending = self._pending.pop(round_num, None)
        cohort = pending.result() if pending else self._cohort(round_num)
        if round_num < until_round:
            self._pending[round_num + 1] = self._pool.submit(self._cohort, round_num + 1)
        return self.hybrid.next(state, cohort)

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(cancel_futures=True)


def _train(exp: Experiment, until_round: int, engine: str = "tff") -> int:
    cfg = exp.cfg
    if not 1 <= until_round <= cfg.rounds:
        raise Error(f"until_round must be in [1, rounds={cfg.rounds}]. Got {until_round}.")
    state, start_round = restore_or_start(exp)
    dropped = metrics_log.truncate_after(exp.paths.metrics, start_round)
    if dropped:
        log.info("Dropped %d metrics rows written after the checkpoint of round %d", dropped, start_round)
    if start_round >= until_round:
        log.info("Already at round %d >= %d; nothing to do", start_round, until_round)
        return start_round

    plan = privacy.PrivacyPlan.of(cfg) if cfg.aggregator == "dp" else None
    weights = exp.process.get_model_weights(state).trainable
    update_bits, float_bits = aggregators.update_bits(cfg, [tuple(np.shape(w)) for w in weights])
    num_parameters = sum(int(np.size(w)) for w in weights)
    all_ids = exp.manifest.client_ids("train")
    clients = {cid: read_client(exp, "train", cid) for cid in all_ids}
    index = {cid: i for i, cid in enumerate(all_ids)}
    client_ids = all_ids[: len(all_ids) - cfg.heldout_clients]  # the last heldout_clients never train
    heldout = [clients[cid] for cid in all_ids[len(client_ids) :]]
    test = read_split(exp, "test")
    runner = RoundRunner(exp, engine, clients, index, client_ids)
    if engine == "tff" and tf.config.list_physical_devices("GPU"):
        log.warning("This machine has a GPU, but the tff engine computes in TFF's CPU-only worker_binary "
                    "(google-parfait/tensorflow-federated#4600). Fix: engine='hybrid' trains on the GPU.")
    log.info("Training rounds %d-%d on the %s engine%s", start_round + 1, until_round, engine,
             f" ({getattr(runner.hybrid, 'jax_device', runner.hybrid.device)})" if runner.hybrid else "")
    try:
        _rounds(exp, runner, state, start_round, until_round, plan, (update_bits, float_bits, num_parameters),
                heldout, test)
    finally:
        runner.close()
    return until_round


def _rounds(exp: Experiment, runner: RoundRunner, state, start_round: int, until_round: int, plan, bits,
            heldout, test) -> None:
    cfg = exp.cfg
    update_bits, float_bits, num_parameters = bits
    for round_num in range(start_round + 1, until_round + 1):
        start = time.perf_counter()
        sampled = runner.sampled(round_num)
        row = {"round": round_num, "clients_sampled": len(sampled), "engine": runner.engine}
        if sampled or plan is not None:  # DP: an empty round still releases noise, as its analysis assumes
            state, metrics = runner.next(state, round_num, until_round)
            if sampled:
                row.update(round_metrics(metrics))
                row.update(metrics.get("client_updates") or {})  # the hybrid's update norms (not a TFF metric)
                row.update(client_updates.clipped_fractions(row, len(sampled)))
        if not sampled:  # Poisson sampling drew nobody
            log.warning("Round %d sampled no clients%s", round_num, "" if plan else "; the model is unchanged")
        row.update(
            bits_sent=update_bits * len(sampled),  # uplink, as encoded (the tutorial's "aggregated bits")
            bits_broadcast=float_bits * len(sampled),  # downlink: the float32 model to each client
            bits_float32=float_bits * len(sampled),
            compression_ratio=float_bits / update_bits,
            bits_per_parameter=update_bits / num_parameters,
        )
        if plan is not None:
            row.update(epsilon=plan.epsilon(round_num), delta=plan.delta, noise_multiplier=cfg.noise_multiplier)
            if round_num % cfg.eval_every == 0 or round_num == cfg.rounds:
                row["epsilon_pld"] = plan.epsilon(round_num, accountant="pld")
        if round_num % cfg.eval_every == 0 or round_num == cfg.rounds:
            row.update(evaluate_central(exp, state, test))
            if heldout:
                row.update(evaluate_heldout(exp, state, heldout))
        if runner.hybrid:
            row.update(devices.gpu_memory_peak_mb())
        row["round_seconds"] = time.perf_counter() - start
        row["wall_time"] = time.time()
        metrics_log.append_row(exp.paths.metrics, row)
        exp.checkpoints.save(round_num, tf.nest.flatten(state))
        log.info(
            "round %d/%d loss=%.4f accuracy=%.4f%s seconds=%.2f",
            round_num, cfg.rounds, row.get("train_loss", float("nan")), row.get("train_accuracy", float("nan")),
            f" test_accuracy={row['test_accuracy']:.4f}" if "test_accuracy" in row else "", row["round_seconds"],
        )
        lifecycle.maybe_inject_fault(round_num)


def export_model(exp: Experiment) -> dict:
    """Evaluates the final state on the test split and saves it as an MLflow TensorFlow model."""
    import mlflow.tensorflow
    from mlflow.models import infer_signature

    if isinstance(exp, reconstruction.ReconExperiment):
        return reconstruction.export(exp)
    if exp.cfg.algorithm == "sparse_select":
        from trainer import sparse_training  # noqa: PLC0415

        return sparse_training.export(exp)
    latest = exp.checkpoints.load_latest()
    if latest is None or latest.round_num != exp.cfg.rounds:
        reached = None if latest is None else latest.round_num
        raise Error(f"The run has reached round {reached} of {exp.cfg.rounds}; train all rounds before exporting.")
    state = tf.nest.pack_sequence_as(exp.process.initialize(), latest.leaves)
    test = read_split(exp, "test")
    metrics = evaluate_central(exp, state, test)

    tmp = exp.paths.root / f".model-{uuid.uuid4().hex[:8]}"
    example = test.x[:5]
    mlflow.tensorflow.save_model(
        exp.eval_model,
        tmp,
        signature=infer_signature(example, exp.eval_model(example).numpy()),
        input_example=example,
        # Stated, not inferred: inference reloads the model in a subprocess (~15 s).
        pip_requirements=[f"tensorflow=={tf.__version__}"],
        # Text models as HDF5: a SavedModel traces every GRU function (about a minute on 2 cores).
        keras_model_kwargs={"save_format": "h5"} if exp.manifest.kind == "text" else None,
    )
    atomic.replace_dir(tmp, exp.paths.model)
    final = {
        "round": latest.round_num,
        **metrics,
        "num_parameters": int(sum(np.prod(v.shape) for v in exp.eval_model.weights)),
        "test_examples": int(len(test.y)),
    }
    atomic.write_json(exp.paths.final, final)
    recipe_results.measure(exp)  # what the recipe's reference check needs beyond the metrics (if anything)
    log.info("Exported the round-%d model to %s: %s", latest.round_num, exp.paths.model, final)
    return final
