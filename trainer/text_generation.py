"""The text-generation recipe's measurement: held-out lines before and after federated fine-tuning.

federated_learning_for_text_generation evaluates the pretrained model on Shakespeare before fine-tuning
(loss 3.171, accuracy 0.428 in TFF's published run), fine-tunes with client SGD at learning rate 0.5, and
finds accuracy falling (0.181 after 5 rounds). Measured here after the run's last round, on the held-out
lines of the fine-tuning clients (the staged ``test`` split):

- ``warm_start_test_loss`` / ``warm_start_test_accuracy``: the registered warm start, before any round;
- ``final_test_loss`` / ``final_test_accuracy``: after the run's rounds (as ``final.json``);
- ``lr05_test_loss`` / ``lr05_test_accuracy``: the same rounds again (same clients, batches and start) with
  the tutorial's client learning rate 0.5, so the run shows whether 0.5 degrades the model here too;
- a seeded sample of generated text from the warm start and from the fine-tuned model, written to
  ``artifacts/generated_text.txt`` (logged to the MLflow run under ``recipe/``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tasks import atomic
from trainer import text

log = logging.getLogger("fedflow.trainer")
TUTORIAL_LEARNING_RATE = 0.5
ARTIFACTS = "artifacts"  # inside the run directory; the Airflow side logs it under "recipe/"
SAMPLE_START = "ROMEO:\nWhat of TensorFlow Federated, you ask? "


def measure(exp) -> dict[str, float]:
    from trainer import algorithms, program, recipe_results  # noqa: PLC0415 - they import this module's peers

    cfg = exp.cfg
    test = program.read_split(exp, "test")
    start = program.initial_state(exp)  # the warm start (or the seeded initialisation without one)
    before = program.evaluate_central(exp, start, test)
    latest = exp.checkpoints.load_latest()
    final_state = tf.nest.pack_sequence_as(exp.process.initialize(), latest.leaves)
    after = program.evaluate_central(exp, final_state, test)
    if cfg.client_learning_rate == TUTORIAL_LEARNING_RATE:
        tutorial_lr = after
    else:
        process = algorithms.build_learning_process(
            dataclasses.replace(cfg, client_learning_rate=TUTORIAL_LEARNING_RATE), exp.model_fn
        )
        state = process.set_model_weights(process.initialize(), exp.process.get_model_weights(start))
        for _, output in recipe_results.replay(exp, process, state):
            state = output.state
        model = text.build_char_gru(cfg.rnn_units)  # building a process invalidates earlier Keras models (FACTS.md)
        process.get_model_weights(state).assign_weights_to(model)
        tutorial_lr = text.evaluate(model, test)

    samples = {}
    for name, state in (("warm start", start), (f"after {cfg.rounds} rounds", final_state)):
        weights = exp.process.get_model_weights(state)
        samples[name] = text.generate(
            [np.asarray(w) for w in weights.trainable], cfg.rnn_units, SAMPLE_START, seed=cfg.seed
        )
    out = exp.paths.root / ARTIFACTS
    out.mkdir(exist_ok=True)
    (out / "generated_text.txt").write_text(
        "".join(
            f"=== {name} (seeded sampling, seed {cfg.seed}, temperature 1.0) ===\n{sample}\n\n"
            for name, sample in samples.items()
        )
    )
    results = {
        "warm_start_test_loss": before["test_loss"],
        "warm_start_test_accuracy": before["test_accuracy"],
        "final_test_loss": after["test_loss"],
        "final_test_accuracy": after["test_accuracy"],
        "lr05_test_loss": tutorial_lr["test_loss"],
        "lr05_test_accuracy": tutorial_lr["test_accuracy"],
        "random_guess_accuracy": 1.0 / text.VOCAB_SIZE,
        "test_sequences": int(len(test.y)),
        "test_characters": int(test.y.size),
    }
    warm = exp.paths.root / "warm_start.json"
    if warm.exists():
        record = atomic.read_json(warm)
        results["warm_start_version"] = float(record.get("version", 0))
        for key in ("test_loss", "test_accuracy"):  # on the pretraining plays' own held-out lines
            if key in (record.get("pretrain") or {}):
                results[f"pretrain_{key}"] = float(record["pretrain"][key])
    atomic.write_json(out / "text_generation.json", results)
    return results
