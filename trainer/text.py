"""Next-character prediction on the staged plays: TFF's text-generation tutorial's model and input pipeline.

federated_learning_for_text_generation fine-tunes a character GRU (Embedding 86 -> 256, GRU 1024, Dense 86;
the TensorFlow text-generation tutorial's model) on (play, character) clients. Its pipeline, kept here:

- the tutorial's fixed vocabulary of 86 characters (:data:`VOCAB`, ids in its order) and ``to_ids`` with the
  tutorial's lookup default: a character outside the vocabulary becomes id 0 (none occurs in the staged
  plays: 0 of 4,252,355 characters, measured);
- a client's text cut into sequences of ``SEQ_LENGTH + 1`` characters (the remainder dropped), each split
  into input (the first 100) and target (the last 100);
- batches of ``batch_size`` sequences (the tutorial's 8), formed by the engine like every other data set.

The staged examples are single lines of speech; a client's text is its lines, each ending with the
vocabulary's ``'\\n'``. The tutorial's accuracy (``FlattenedCategoricalAccuracy``) is the share of target
characters predicted right. Its pipeline, and ours, forms only full sequences: there are no padding
positions, and no end-of-sequence token beyond the line ends, which are real characters of the text.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tasks import shards

VOCAB = list("dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r")
VOCAB_SIZE = len(VOCAB)  # 86
CHAR_IDS = {char: i for i, char in enumerate(VOCAB)}
OOV_ID = 0  # the tutorial's StaticHashTable default_value
SEQ_LENGTH = 100
EMBEDDING_DIM = 256


class Error(Exception):
    """Base class for text-model errors."""


def to_ids(text: str) -> np.ndarray:
    """The tutorial's ``to_ids``: one int64 id per character, unknown characters as :data:`OOV_ID`."""
    return np.fromiter((CHAR_IDS.get(char, OOV_ID) for char in text), dtype=np.int64, count=len(text))


def client_text(lines) -> str:
    """A client's lines as one text, each line ended by ``'\\n'``."""
    return "".join(f"{line}\n" for line in lines)


def sequences(text: str, seq_length: int = SEQ_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """``text`` as (input, target) id arrays of shape ``(n, seq_length)``: consecutive windows of
    ``seq_length + 1`` characters (the last partial window dropped), split as the tutorial's
    ``split_input_target``."""
    ids = to_ids(text)
    n = len(ids) // (seq_length + 1)
    windows = ids[: n * (seq_length + 1)].reshape(n, seq_length + 1)
    return windows[:, :-1].copy(), windows[:, 1:].copy()


def read_client(manifest: shards.Manifest, split: str, client_id: str) -> shards.ClientExamples:
    """One staged client's lines as sequences: ``x`` its inputs, ``y`` its targets (int64, (n, 100))."""
    lines = manifest.read_columns(split, client_id, [manifest.schema.x])[manifest.schema.x]
    x, y = sequences(client_text(lines))
    return shards.ClientExamples(client_id, x, y)


def read_split(manifest: shards.Manifest, split: str) -> shards.ClientExamples:
    """Every client's sequences of ``split`` (each client's text cut on its own), client_id ``'*'``."""
    parts = [read_client(manifest, split, cid) for cid in manifest.client_ids(split)]
    if not parts:
        raise shards.UnknownClientError(f"split {split!r} of {manifest.root} has no clients.")
    return shards.ClientExamples("*", np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def build_char_gru(rnn_units: int, *, batch_size: int | None = None, stateful: bool = False) -> tf.keras.Model:
    """The tutorial's model: Embedding(86, 256) -> GRU(rnn_units, return_sequences) -> Dense(86) logits.
    ``stateful`` with ``batch_size`` 1 is the generation copy (the tutorial's batch-1 model)."""
    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            layers.Input((None,), batch_size=batch_size, dtype=tf.int64),
            layers.Embedding(VOCAB_SIZE, EMBEDDING_DIM),
            layers.GRU(rnn_units, return_sequences=True, stateful=stateful, recurrent_initializer="glorot_uniform"),
            layers.Dense(VOCAB_SIZE),
        ],
        name="char_gru",
    )


class FlattenedCategoricalAccuracy(tf.keras.metrics.SparseCategoricalAccuracy):
    """The tutorial's metric: accuracy over every (batch, position) prediction of rank-3 logits."""

    def __init__(self, name: str = "accuracy", dtype=tf.float32) -> None:
        super().__init__(name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.reshape(y_true, [-1, 1])
        y_pred = tf.reshape(y_pred, [-1, VOCAB_SIZE, 1])
        return super().update_state(y_true, y_pred, sample_weight)


def loss_fn() -> tf.keras.losses.Loss:
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tff_model_fn(rnn_units: int):
    """A no-argument constructor of the TFF model (the tutorial's ``create_tff_model``)."""
    input_spec = collections.OrderedDict(
        x=tf.TensorSpec([None, SEQ_LENGTH], tf.int64), y=tf.TensorSpec([None, SEQ_LENGTH], tf.int64)
    )

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            build_char_gru(rnn_units), loss=loss_fn(), input_spec=input_spec, metrics=[FlattenedCategoricalAccuracy()]
        )

    return model_fn


def evaluate(model: tf.keras.Model, examples: shards.ClientExamples, batch_size: int = 64) -> dict[str, float]:
    """Mean loss and accuracy over every target character of ``examples`` (held-out lines)."""
    if len(examples.y) == 0:
        raise Error(
            "No held-out sequences to evaluate on (each client's test lines are shorter than "
            f"{SEQ_LENGTH + 1} characters). Fix: raise test_fraction or min_examples_per_client."
        )
    loss_sum, correct, count = 0.0, 0, 0
    per_token = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    for start in range(0, len(examples.y), batch_size):
        x, y = examples.x[start : start + batch_size], examples.y[start : start + batch_size]
        logits = model(x, training=False)
        loss_sum += float(tf.reduce_sum(per_token(y, logits)))
        correct += int(np.sum(np.argmax(logits.numpy(), axis=-1) == y))
        count += y.size
    return {"test_loss": loss_sum / count, "test_accuracy": correct / count}


def generate(
    weights: list[np.ndarray],
    rnn_units: int,
    start: str,
    *,
    num_chars: int = 200,
    seed: int = 0,
    temperature: float = 1.0,
) -> str:
    """The tutorial's ``generate_text`` with seeded sampling: ``start`` continued by ``num_chars``
    characters drawn from the model's softmax (a batch-1 stateful copy carrying ``weights``)."""
    model = build_char_gru(rnn_units, batch_size=1, stateful=True)
    model.set_weights(weights)
    rng = np.random.default_rng(seed)
    model.reset_states()
    inputs = to_ids(start)[None, :]
    generated = []
    for _ in range(num_chars):
        logits = model(inputs, training=False)[0, -1].numpy().astype(np.float64) / temperature
        probabilities = np.exp(logits - logits.max())
        next_id = int(rng.choice(VOCAB_SIZE, p=probabilities / probabilities.sum()))
        generated.append(VOCAB[next_id])
        inputs = np.array([[next_id]], dtype=np.int64)
    return start + "".join(generated)
