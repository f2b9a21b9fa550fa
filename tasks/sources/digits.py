"""scikit-learn's handwritten digits (1,797 8x8 images, 10 classes): a centralised source that the
stage step partitions into simulated clients (IID, Dirichlet label skew, k classes per client,
fixed label-sorted shards). Ships with scikit-learn: nothing to download."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.shards import Column, Schema

SCHEMA = Schema("image", (Column("pixels", "float32", (8, 8, 1)), Column("label", "int64")),
                x="pixels", label="label", num_classes=10)


def load() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Returns (pixels float32 in [0, 1] with a channel axis, labels int64, a description)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    return x, y, {"name": "sklearn.datasets.load_digits", "num_examples": int(len(y)), "image_shape": [8, 8]}
