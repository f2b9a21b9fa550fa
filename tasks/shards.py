"""The staged-data layout: Parquet shards with one row group per client, plus ``manifest.json``.

A shard holds up to ``clients_per_shard`` clients, each client's examples in one row group, so reading
one client is one row-group read (no scan of the data set). Features are stored as fixed-size binary
(raw little-endian tensors): measured ~10x faster to decode than Parquet list columns.

Used by the stage step (writing) and by the trainer (reading); numpy and pyarrow only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class Error(Exception):
    """Base class for shard errors."""


class UnknownClientError(Error, KeyError):
    """The manifest has no such client in that split."""


@dataclasses.dataclass(frozen=True)
class Feature:
    column: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class ClientExamples:
    client_id: str
    x: np.ndarray
    y: np.ndarray


def write_split(
    out_dir: Path,
    split: str,
    clients: Sequence[ClientExamples],
    x_feature: Feature,
    *,
    clients_per_shard: int = 64,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Writes ``clients`` as shards ``<split>-NNNNN.parquet``; returns (client entries, file entries)."""
    schema = pa.schema(
        [("client_id", pa.string()), (x_feature.column, pa.binary(x_feature.nbytes)), ("label", pa.int64())]
    )
    entries, files = [], {}
    for shard_index, start in enumerate(range(0, len(clients), clients_per_shard)):
        name = f"{split}-{shard_index:05d}.parquet"
        with pq.ParquetWriter(out_dir / name, schema) as writer:
            for row_group, client in enumerate(clients[start : start + clients_per_shard]):
                writer.write_table(_client_table(client, x_feature, schema), row_group_size=max(1, len(client.y)))
                entries.append(
                    {
                        "id": client.client_id,
                        "shard": name,
                        "row_group": row_group,
                        "num_examples": int(len(client.y)),
                        "label_counts": _label_counts(client.y),
                    }
                )
        files[name] = {"sha256": atomic.sha256_file(out_dir / name), "bytes": (out_dir / name).stat().st_size}
    return entries, files


def write_dataset(
    out_dir: Path,
    splits: dict[str, Sequence[ClientExamples]],
    x_feature: Feature,
    *,
    num_classes: int,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Writes every split's shards and then ``manifest.json`` (last: its presence marks completion).

    ``metadata`` (dataset, fingerprint, settings, source, ...) is stored in the manifest as given.
    """
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        **metadata,
        "num_classes": num_classes,
        "features": {
            "x": {"column": x_feature.column, "dtype": x_feature.dtype, "shape": list(x_feature.shape)},
            "y": {"column": "label", "dtype": "int64", "shape": []},
        },
        "splits": {},
        "files": {},
    }
    for split, clients in splits.items():
        entries, files = write_split(out_dir, split, clients, x_feature)
        manifest["splits"][split] = {"num_examples": sum(e["num_examples"] for e in entries), "clients": entries}
        manifest["files"].update(files)
    atomic.write_json(out_dir / MANIFEST, manifest)
    return manifest


def _client_table(client: ClientExamples, x_feature: Feature, schema: pa.Schema) -> pa.Table:
    x = np.ascontiguousarray(client.x, dtype=np.dtype(x_feature.dtype).newbyteorder("<"))
    if x.shape[1:] != x_feature.shape:
        raise Error(f"Client {client.client_id}: expected x of shape (n, {x_feature.shape}). Got {x.shape}.")
    raw = pa.py_buffer(x.tobytes())
    x_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(x_feature.nbytes), len(x), [None, raw])
    return pa.Table.from_arrays(
        [pa.array([client.client_id] * len(x), pa.string()), x_array, pa.array(client.y, pa.int64())],
        schema=schema,
    )


def _label_counts(y: np.ndarray) -> dict[str, int]:
    labels, counts = np.unique(y, return_counts=True)
    return {str(int(label)): int(count) for label, count in zip(labels, counts, strict=True)}


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a staged data set."""

    root: Path
    data: dict[str, Any]

    @classmethod
    def read(cls, root: Path) -> Manifest:
        root = Path(root)
        return cls(root, atomic.read_json(root / MANIFEST))

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def x_feature(self) -> Feature:
        f = self.data["features"]["x"]
        return Feature(f["column"], f["dtype"], tuple(f["shape"]))

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])

    def client_ids(self, split: str) -> list[str]:
        return [c["id"] for c in self.data["splits"][split]["clients"]]

    def client_entry(self, split: str, client_id: str) -> dict[str, Any]:
        index = self._index(split)
        if client_id not in index:
            raise UnknownClientError(f"No client {client_id!r} in split {split!r} of {self.root}.")
        return index[client_id]

    def _index(self, split: str) -> dict[str, dict[str, Any]]:
        cache = self.__dict__.setdefault("_client_index", {})
        if split not in cache:
            cache[split] = {c["id"]: c for c in self.data["splits"][split]["clients"]}
        return cache[split]

    def read_client(self, split: str, client_id: str) -> ClientExamples:
        """Reads one client's examples: one row-group read of one shard."""
        entry = self.client_entry(split, client_id)
        table = pq.ParquetFile(self.root / entry["shard"]).read_row_group(
            entry["row_group"], columns=[self.x_feature.column, "label"]
        )
        return ClientExamples(client_id, _decode(table.column(0), self.x_feature), _int_column(table.column(1)))

    def read_split(self, split: str, client_ids: Iterable[str] | None = None) -> ClientExamples:
        """All examples of ``split`` (or of ``client_ids``) concatenated, client_id ``'*'``."""
        ids = list(client_ids) if client_ids is not None else self.client_ids(split)
        parts = [self.read_client(split, cid) for cid in ids]
        return ClientExamples(
            "*", np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
        )


def _decode(column: pa.ChunkedArray, feature: Feature) -> np.ndarray:
    chunks = []
    for array in column.chunks:
        buffer = array.buffers()[1]
        raw = np.frombuffer(buffer, dtype=np.uint8, count=len(array) * feature.nbytes,
                            offset=array.offset * feature.nbytes)
        chunks.append(raw.view(np.dtype(feature.dtype).newbyteorder("<")).reshape(len(array), *feature.shape))
    if not chunks:
        return np.zeros((0, *feature.shape), dtype=feature.dtype)
    return np.concatenate(chunks).astype(feature.dtype, copy=False)


def _int_column(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.int64, copy=False)
