"""Staged examples of every trainable kind become the float32 model input the Keras models take."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import shards
from trainer import program


def staged(tmp_path, column: shards.Column, kind: str, x: np.ndarray) -> shards.Manifest:
    schema = shards.Schema(kind, (column, shards.Column("label", "int64")), x=column.name, label="label", num_classes=3)
    client = shards.Client("c0", {column.name: x, "label": np.array([0, 1, 2])})
    shards.write_dataset(tmp_path, {"train": [client]}, schema, metadata={"fingerprint": "t"})
    return shards.Manifest.read(tmp_path)


def test_uint8_images_without_a_channel_are_scaled_to_0_1_and_get_one(tmp_path):
    x = np.array([np.full((28, 28), v, np.uint8) for v in (0, 51, 255)])
    m = staged(tmp_path, shards.Column("pixels", "uint8", (28, 28)), "image", x)

    examples = program.model_examples(m, m.read_client("train", "c0"))

    assert program.model_input_shape(m) == (28, 28, 1)
    assert examples.x.dtype == np.float32 and examples.x.shape == (3, 28, 28, 1)
    assert examples.x[:, 0, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_vectors_keep_their_shape(tmp_path):
    m = staged(tmp_path, shards.Column("x", "float32", (5,)), "vector", np.ones((3, 5), np.float32))

    assert program.model_input_shape(m) == (5,)


def test_text_becomes_character_sequences_and_ratings_are_refused_by_the_classifier_engine(tmp_path):
    """Text trains the character GRU (trainer/text.py); ratings train only through fed_recon's own loop."""
    from trainer import text

    (tmp_path / "text").mkdir()
    (tmp_path / "ratings").mkdir()
    schema = shards.Schema("text", (shards.Column("snippets", "string"),), x="snippets")
    shards.write_dataset(tmp_path / "text", {"train": [shards.Client("c0", {"snippets": ["a line"]})]}, schema,
                         metadata={"fingerprint": "t"})
    manifest = shards.Manifest.read(tmp_path / "text")
    assert program.model_input_shape(manifest) == (text.SEQ_LENGTH,)
    assert program.model_num_classes(manifest) == text.VOCAB_SIZE

    ratings = shards.Schema("ratings", (shards.Column("item_id", "int64"), shards.Column("rating", "float32")))
    shards.write_dataset(tmp_path / "ratings", {"train": [shards.Client("u0", {"item_id": [1], "rating": [4.0]})]},
                         ratings, metadata={"fingerprint": "r"})
    with pytest.raises(program.Error, match="holds ratings data"):
        program.model_input_shape(shards.Manifest.read(tmp_path / "ratings"))
