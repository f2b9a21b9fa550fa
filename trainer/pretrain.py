"""Central pretraining of the text model: what TFF's text-generation tutorial downloads, trained here.

The tutorial starts from a character GRU pretrained on two Dickens novels (following the TensorFlow
text-generation tutorial: Adam, sequences of 100 + 1, batch 64) and fine-tunes it federatedly on Shakespeare.
No such model can be downloaded here, so the run pretrains one centrally on plays disjoint from the
fine-tuning plays (``pretrain_plays``), staged by the Airflow side as a data set of their own
(``pretrain/staged.json``). Output, in ``<run>/pretrain/``: ``model/`` (MLflow's TensorFlow format, which the
Airflow side registers as the ``warm_start`` alias), ``pretrain.json`` (per-epoch and held-out metrics)
and ``generated_text.txt`` (a seeded sample).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from tasks import atomic, shards
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from trainer import text

log = logging.getLogger("fedflow.trainer")
DIRECTORY = "pretrain"  # inside the run directory
STAGED = "staged.json"  # the pretraining data set, written by the Airflow side
RESULT = "pretrain.json"
SAMPLE = "generated_text.txt"
SAMPLE_START = "ROMEO:\nWhat of TensorFlow Federated, you ask? "


def pretrain(run_dir: Path) -> dict:
    """Trains the configured text model centrally on the pretraining plays' training lines (seeded),
    evaluates it on their held-out lines, and saves it. Returns (and writes) the metrics."""
    import mlflow.tensorflow  # noqa: PLC0415
    from mlflow.models import infer_signature  # noqa: PLC0415

    run = RunPaths(Path(run_dir))
    cfg = ExperimentConfig.read_json(run.config)
    out = run.root / DIRECTORY
    manifest = shards.Manifest.read(Path(atomic.read_json(out / STAGED)["path"]))
    train, test = text.read_split(manifest, "train"), text.read_split(manifest, "test")
    log.info(
        "Pretraining %s (GRU %d) on %d sequences of %d plays' lines; %d held-out sequences",
        cfg.model,
        cfg.rnn_units,
        len(train.y),
        len(cfg.parsed_pretrain_plays),
        len(test.y),
    )
    tf.keras.utils.set_random_seed(cfg.seed)
    model = text.build_char_gru(cfg.rnn_units)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(cfg.pretrain_learning_rate),
        loss=text.loss_fn(),
        metrics=[text.FlattenedCategoricalAccuracy()],
    )
    dataset = (
        tf.data.Dataset.from_tensor_slices((train.x, train.y))
        .shuffle(len(train.y), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.pretrain_batch_size, drop_remainder=len(train.y) >= cfg.pretrain_batch_size)
    )
    start = time.perf_counter()
    history = model.fit(dataset, epochs=cfg.pretrain_epochs, verbose=2)
    seconds = time.perf_counter() - start
    held_out = text.evaluate(model, test)
    sample = text.generate(model.get_weights(), cfg.rnn_units, SAMPLE_START, seed=cfg.seed)

    tmp = out / f".model-{uuid.uuid4().hex[:8]}"
    example = test.x[:2]
    mlflow.tensorflow.save_model(
        model,
        tmp,
        signature=infer_signature(example, model(example).numpy()),
        input_example=example,
        pip_requirements=[f"tensorflow=={tf.__version__}"],
        # HDF5: saved and loaded in seconds; a SavedModel traces the GRU (a minute here)
        keras_model_kwargs={"save_format": "h5"},
    )
    shutil.rmtree(out / "model", ignore_errors=True)
    tmp.rename(out / "model")
    (out / SAMPLE).write_text(sample + "\n")
    result = {
        "plays": cfg.parsed_pretrain_plays,
        "rnn_units": cfg.rnn_units,
        "epochs": cfg.pretrain_epochs,
        "batch_size": cfg.pretrain_batch_size,
        "learning_rate": cfg.pretrain_learning_rate,
        "train_sequences": int(len(train.y)),
        "test_sequences": int(len(test.y)),
        "epoch_loss": [float(v) for v in history.history["loss"]],
        "epoch_accuracy": [float(v) for v in history.history["accuracy"]],
        "test_loss": held_out["test_loss"],
        "test_accuracy": held_out["test_accuracy"],
        "random_guess_accuracy": 1.0 / text.VOCAB_SIZE,
        "seconds": seconds,
        "num_parameters": int(sum(np.prod(v.shape) for v in model.weights)),
    }
    atomic.write_json(out / RESULT, result)
    log.info(
        "Pretrained in %.1f s: held-out loss %.4f, accuracy %.4f (random guessing %.4f); sample:\n%s",
        seconds,
        held_out["test_loss"],
        held_out["test_accuracy"],
        1.0 / text.VOCAB_SIZE,
        sample,
    )
    return result
