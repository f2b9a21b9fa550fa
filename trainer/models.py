"""Keras models for the staged image data sets (8x8 digits and alike)."""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_federated as tff


def build_keras_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, rnn_units: int = 1024
                      ) -> tf.keras.Model:
    """An uncompiled Keras model that outputs logits. Seed TF before calling for fixed initial weights."""
    layers = tf.keras.layers
    if name == "char_gru":  # next-character prediction on text (trainer/text.py)
        from trainer import text  # noqa: PLC0415

        return text.build_char_gru(rnn_units)
    if name == "cnn":
        body = [
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPool2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPool2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
        ]
    elif name == "mlp":
        body = [layers.Flatten(), layers.Dense(128, activation="relu")]
    elif name == "softmax":  # TFF's image-classification tutorial: zero-initialised softmax regression
        return tf.keras.Sequential([layers.Input(input_shape), layers.Flatten(),
                                    layers.Dense(num_classes, kernel_initializer="zeros")], name=name)
    else:
        raise ValueError(f"model must be 'cnn', 'mlp' or 'softmax'. Got {name!r}.")
    return tf.keras.Sequential([layers.Input(input_shape), *body, layers.Dense(num_classes)], name=name)


def loss_fn() -> tf.keras.losses.Loss:
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tff_model_fn(name: str, input_shape: tuple[int, ...], num_classes: int, *, rnn_units: int = 1024):
    """A no-argument constructor of the TFF model, as ``tff.learning`` algorithms expect."""
    if name == "char_gru":
        from trainer import text  # noqa: PLC0415

        return text.tff_model_fn(rnn_units)
    input_spec = collections.OrderedDict(
        x=tf.TensorSpec([None, *input_shape], tf.float32), y=tf.TensorSpec([None], tf.int64)
    )

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            build_keras_model(name, input_shape, num_classes),
            loss=loss_fn(),
            input_spec=input_spec,
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()],
        )

    return model_fn
