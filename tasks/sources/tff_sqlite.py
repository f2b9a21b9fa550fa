"""TFF 0.87's own on-disk ClientData (``SqlClientData``), read with sqlite3: no TensorFlow, no download.

``tff.simulation.datasets.emnist.load_data(cache_dir=D)`` keeps ``D/emnist_all.sqlite`` with
``examples(split_name, client_id, serialized_example_proto)`` and ``client_metadata(client_id,
split_name, num_examples)``; split names such as ``digits_only_train`` / ``digits_only_test``. Each
example is a serialized ``tf.train.Example``; its wire format is small and stable, so it is decoded
here (:func:`parse_example`) rather than by importing TensorFlow on the Airflow side.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.shards import Client, Column, Schema
from tasks.sources.base import Source, SourceError, file_identity, require_file

READER_VERSION = "1"
X_CANDIDATES = ("pixels", "image", "snippets", "tokens", "x")
LABEL_CANDIDATES = ("label", "y")


# -- tf.train.Example wire format: Example{features: Features{feature: map<string, Feature>}} ------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; values of wire type 2 are bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield field, wire, value


def _feature(buf: bytes) -> list | np.ndarray:
    for kind, _, payload in _fields(buf):
        values = [v for f, w, v in _fields(payload) for v in _list_values(kind, f, w, v)]
        if kind == 1:
            return values  # bytes_list
        if kind == 2:
            return np.asarray(values, dtype=np.float32)  # float_list
        if kind == 3:
            return np.asarray(values, dtype=np.int64)  # int64_list
    return []


def _list_values(kind: int, field: int, wire: int, value: Any) -> list:
    if field != 1:
        return []
    if kind == 1:
        return [bytes(value)]
    if kind == 2:
        if wire == 2:  # packed
            return np.frombuffer(value, dtype="<f4").tolist()
        return [struct.unpack("<f", value)[0]]
    if wire == 2:  # packed varints
        out, pos = [], 0
        while pos < len(value):
            v, pos = _varint(value, pos)
            out.append(v - (1 << 64) if v >= 1 << 63 else v)
        return out
    return [value - (1 << 64) if value >= 1 << 63 else value]


def parse_example(serialized: bytes) -> dict[str, list | np.ndarray]:
    """A serialized ``tf.train.Example`` as {feature name: bytes list | float32 array | int64 array}."""
    features: dict[str, list | np.ndarray] = {}
    for field, _, features_msg in _fields(serialized):
        if field != 1:
            continue
        for entry_field, _, entry in _fields(features_msg):
            if entry_field != 1:
                continue
            key, value = None, b""
            for f, _, v in _fields(entry):
                if f == 1:
                    key = bytes(v).decode("utf-8")
                elif f == 2:
                    value = v
            if key is not None:
                features[key] = _feature(value)
    return features


class TffSqliteSource(Source):
    name = "tff_sqlite"

    def __init__(self, path: str | Path, *, train_split: str = "", test_split: str | None = None,
                 x_column: str = "", label_column: str = "", feature_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None) -> None:
        self.path = require_file(path, "TFF SQLite source")
        try:
            with self._connect() as db:
                names = [r[0] for r in db.execute("SELECT DISTINCT split_name FROM client_metadata ORDER BY 1")]
        except sqlite3.DatabaseError as e:
            raise SourceError(f"TFF SQLite source {self.path}: not a TFF SqlClientData file ({e}). Expected tables "
                              "examples(split_name, client_id, serialized_example_proto) and client_metadata.") from e
        if not names:
            raise SourceError(f"TFF SQLite source {self.path}: client_metadata lists no splits.")
        train = train_split or ("train" if "train" in names else next((n for n in names if n.endswith("train")), ""))
        if train not in names:
            raise SourceError(f"TFF SQLite source {self.path}: no split {train_split or 'ending in train'!r}; the file "
                              f"has {names}. Fix: set source_split to one of them.")
        self.split_names = {"train": train}
        if test_split is not None:
            test = test_split or train.removesuffix("train") + "test"
            if test not in names:
                raise SourceError(f"TFF SQLite source {self.path}: no test split {test!r}; the file has {names}.")
            self.split_names["test"] = test
        self.splits = tuple(self.split_names)
        self._x_column, self._label_column = x_column, label_column
        self.feature_shape = tuple(feature_shape) if feature_shape else None
        self.num_classes = num_classes
        self._schema: Schema | None = None

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True))

    def identity(self) -> dict[str, Any]:
        return {"reader": f"tff_sqlite/{READER_VERSION}", "files": {"train": file_identity(self.path)},
                "splits": self.split_names, "x_column": self._x_column, "label_column": self._label_column,
                "feature_shape": list(self.feature_shape or ()), "num_classes": self.num_classes}

    def _examples(self, split: str) -> Iterator[tuple[str, bytes]]:
        """Every example of ``split`` in one query, grouped by client (SQLite sorts on disk if it must)."""
        with self._connect() as db:
            yield from db.execute("SELECT client_id, serialized_example_proto FROM examples WHERE split_name = ? "
                                  "ORDER BY client_id, rowid", (self.split_names[split],))

    def schema(self) -> Schema:
        if self._schema is None:
            first = next(self._examples("train"), None)
            if first is None:
                raise SourceError(f"TFF SQLite source {self.path}: split {self.split_names['train']!r} has no examples.")
            features = self._parse(first[1], first[0])
            x_name = self._x_column or next((c for c in X_CANDIDATES if c in features), "")
            if x_name not in features:
                raise SourceError(f"TFF SQLite source {self.path}: examples have no feature "
                                  f"{x_name or '/'.join(X_CANDIDATES)!r}; they have {sorted(features)}. Fix: set x_column.")
            label = self._label_column or next((c for c in LABEL_CANDIDATES if c in features), None)
            if label is not None and label not in features:
                raise SourceError(f"TFF SQLite source {self.path}: examples have no feature {label!r}; they have "
                                  f"{sorted(features)}. Fix: set label_column.")
            x = features[x_name]
            if isinstance(x, list):
                self._schema = Schema("text", (Column(x_name, "string"),), x=x_name)
            else:
                shape = self.feature_shape or _natural_shape(len(x))
                if math.prod(shape) != len(x):
                    raise SourceError(f"TFF SQLite source: feature_shape {shape} does not hold the {len(x)} values of "
                                      f"{x_name!r}. Fix: a shape with {len(x)} values.")
                kind = "image" if len(shape) in (2, 3) else "vector"
                columns = [Column(x_name, "float32", shape)] + ([Column(label, "int64")] if label else [])
                self._schema = Schema(kind, tuple(columns), x=x_name, label=label, num_classes=self.num_classes)
        return self._schema

    def _parse(self, blob: bytes, client_id: str) -> dict[str, list | np.ndarray]:
        try:
            return parse_example(bytes(blob))
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise SourceError(f"TFF SQLite source {self.path}: client {client_id!r} has an example that is not a "
                              f"valid tf.train.Example ({e}).") from e

    def client_sizes(self, split: str) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT client_id, num_examples FROM client_metadata WHERE split_name = ? "
                              "ORDER BY client_id", (self.split_names[split],)).fetchall()
        return {cid: int(n) for cid, n in rows}

    def clients(self, split: str) -> Iterator[Client]:
        return self._read(split, None)

    def select(self, split: str, client_ids: set[str]) -> Iterator[Client]:
        return self._read(split, client_ids)

    def _read(self, split: str, only: set[str] | None) -> Iterator[Client]:
        expected = self.client_sizes(split)
        for cid, group in itertools.groupby(self._examples(split), key=lambda row: row[0]):
            if only is not None and cid not in only:
                continue
            rows = [self._parse(blob, cid) for _, blob in group]
            yield self._client(cid, rows, expected.get(cid, 0))

    def _client(self, cid: str, rows: list[dict], expected: int) -> Client:
        if len(rows) != expected:
            raise SourceError(f"TFF SQLite source {self.path}: client {cid!r}: client_metadata says {expected} "
                              f"examples, the examples table has {len(rows)}.")
        columns: dict[str, Any] = {}
        for col in self.schema().columns:
            missing = next((i for i, r in enumerate(rows) if col.name not in r), None)
            if missing is not None:
                raise SourceError(f"TFF SQLite source {self.path}: client {cid!r}, example {missing} lacks feature "
                                  f"{col.name!r}.")
            if col.dtype == "string":
                columns[col.name] = [_text(r[col.name], self.path, cid) for r in rows]
            elif col.shape:
                columns[col.name] = np.stack([np.asarray(r[col.name], np.float32).reshape(col.shape) for r in rows])
            else:
                columns[col.name] = np.asarray([int(np.asarray(r[col.name]).reshape(-1)[0]) for r in rows])
        return Client(cid, columns)


def _natural_shape(n: int) -> tuple[int, ...]:
    side = math.isqrt(n)
    return (side, side) if side * side == n and n > 1 else (n,)  # EMNIST's 784 -> 28 x 28


def _text(values: list, path: Path, cid: str) -> str:
    try:
        return b"".join(values).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"TFF SQLite source {path}: client {cid!r} has text that is not UTF-8 ({e}).") from e
