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
    elif name in VGG_BLOCKS:  # TFF's simulations_with_accelerators tutorial: create_cnn(blocks, 4)
        return vgg_like_cnn(input_shape, num_classes, num_blocks=VGG_BLOCKS[name], name=name)
    else:
        raise ValueError(f"model must be 'cnn', 'mlp', 'softmax', 'vgg_small' or 'vgg_large'. Got {name!r}.")
    return tf.keras.Sequential([layers.Input(input_shape), *body, layers.Dense(num_classes)], name=name)


# The simulations_with_accelerators tutorial's models: create_cnn(num_blocks, conv_width_multiplier=4), its
# "cnn-14-4" (2,731,082 parameters) and "cnn-26-4" (5,827,658), whatever the input size (global pooling).
VGG_BLOCKS = {"vgg_small": 2, "vgg_large": 4}


def vgg_like_cnn(input_shape: tuple[int, ...], num_classes: int, *, num_blocks: int, width: int = 4,
                 name: str = "vgg") -> tf.keras.Model:
    """The tutorial's ``create_cnn``: per-image standardisation, a 3x3 conv, then three stages of
    ``num_blocks`` blocks of two bias-free 3x3 convs + ReLU (16, 32, 64 filters x ``width``; stages 2 and 3
    start with stride 2), global average pooling and a dense layer to ``num_classes`` logits."""
    layers = tf.keras.layers

    def conv(x, filters, strides):
        return layers.Conv2D(filters, 3, strides=strides, padding="same", kernel_initializer="he_normal",
                             use_bias=False)(x)

    inputs = layers.Input(input_shape)
    x = tf.image.per_image_standardization(inputs)
    x = conv(x, 16 * width, 1)
    for filters, strides in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for block in range(num_blocks):
            x = layers.Activation("relu")(conv(x, filters, strides if block == 0 else 1))
            x = layers.Activation("relu")(conv(x, filters, 1))
    x = layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, layers.Dense(num_classes)(x), name=name)


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
