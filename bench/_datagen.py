"""Synthetic federated data for the data-layer benchmarks (deterministic, generated client by client).

- EMNIST-like: 28x28 float32 in [0, 1], ~80 % exact zeros, ink in 1/255 steps with smooth strokes
  (a 7x7 random field upsampled 4x plus noise, thresholded), int64 labels 0..9, per-client sizes
  skewed like ``fed_emnist_digitsonly`` (clipped log-normal, 20..300 examples, mean ~100).
- digits-like: scikit-learn's real 8x8 digits (values k/16), resampled with replacement.

Writers for the source formats the stage step reads: TFF's h5 ClientData layout
(``examples/<client_id>/<feature>``) and a table with a client-id column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

EMNIST_SHAPE = (28, 28)
DIGITS_SHAPE = (8, 8)
_INK_THRESHOLD = None  # the field value above which a pixel is ink (~20 % of pixels), fixed once


def emnist_sizes(num_clients: int, seed: int = 0, lo: int = 20, hi: int = 300) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x517E])
    return np.clip(np.round(rng.lognormal(np.log(85), 0.6, num_clients)), lo, hi).astype(np.int64)


def _threshold() -> float:
    global _INK_THRESHOLD
    if _INK_THRESHOLD is None:
        _INK_THRESHOLD = float(np.quantile(_field(np.random.default_rng(1), 2000), 0.8))
    return _INK_THRESHOLD


def _field(rng: np.random.Generator, n: int) -> np.ndarray:
    low = rng.random((n, 7, 7), dtype=np.float32)
    return low.repeat(4, axis=1).repeat(4, axis=2) + 0.35 * rng.random((n, *EMNIST_SHAPE), dtype=np.float32)


def emnist_client(index: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, 28, 28) float32, y (n,) int64) of client ``index``; the same arguments give the same data."""
    rng = np.random.default_rng([seed, index])
    field = _field(rng, n)
    t = _threshold()
    ink = np.minimum(1.0, (field - t) * 3.0 + 0.25)
    x = np.where(field > t, np.round(ink * 255) / 255, 0).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)


_DIGITS = None


def digits_client(index: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, 8, 8) float32, y (n,) int64): real digits drawn with replacement."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        _DIGITS = (d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))
    rng = np.random.default_rng([seed, index, 8])
    pick = rng.integers(0, len(_DIGITS[1]), n)
    return _DIGITS[0][pick], _DIGITS[1][pick]


def client_id(index: int) -> str:
    return f"f{index:04d}_{index % 97:02d}"  # TFF EMNIST ids look like 'f0000_14'


def clients(
    kind: str, num_clients: int, *, per_client: int = 50, seed: int = 0
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(client id, x, y) for ``kind`` 'emnist' (skewed sizes) or 'digits' (``per_client`` each)."""
    if kind == "emnist":
        for i, n in enumerate(emnist_sizes(num_clients, seed)):
            yield (client_id(i), *emnist_client(i, int(n), seed))
    elif kind == "digits":
        for i in range(num_clients):
            yield (client_id(i), *digits_client(i, per_client, seed))
    else:
        raise ValueError(kind)


def write_h5(path: Path, data: Iterator[tuple[str, np.ndarray, np.ndarray]], *, x_name: str = "pixels") -> int:
    """TFF h5 ClientData layout (int32 labels, as TFF's EMNIST files); returns the example count."""
    import h5py

    total = 0
    with h5py.File(path, "w") as f:
        examples = f.create_group("examples")
        for cid, x, y in data:
            group = examples.create_group(cid)
            group.create_dataset(x_name, data=x)
            group.create_dataset("label", data=y.astype(np.int32))
            total += len(y)
    return total


def write_table(path: Path, data: Iterator[tuple[str, np.ndarray, np.ndarray]]) -> int:
    """Parquet table: ``client_id``, one float32 column per pixel ``p0..``, ``label``; rows in client order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, total = None, 0
    batch: list[tuple[str, np.ndarray, np.ndarray]] = []

    def flush() -> None:
        nonlocal writer
        ids = np.concatenate([np.full(len(y), cid, dtype=object) for cid, _, y in batch])
        x = np.concatenate([x.reshape(len(x), -1) for _, x, _ in batch])
        y = np.concatenate([y for _, _, y in batch])
        cols = {"client_id": pa.array(ids, pa.string())}
        cols.update({f"p{j}": pa.array(x[:, j]) for j in range(x.shape[1])})
        cols["label"] = pa.array(y)
        table = pa.table(cols)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        batch.clear()

    rows = 0
    for item in data:
        batch.append(item)
        rows += len(item[2])
        total += len(item[2])
        if rows >= 65536:
            flush()
            rows = 0
    if batch:
        flush()
    if writer is not None:
        writer.close()
    return total
