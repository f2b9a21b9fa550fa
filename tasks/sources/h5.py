"""TFF's h5 ClientData files, read with h5py: no TensorFlow, no download.

``tff.simulation.datasets.emnist.load_data`` (before 0.20) and many research copies keep federated
data as ``examples/<client_id>/<feature>``: EMNIST ``fed_emnist_digitsonly_train.h5`` (``pixels``
(n, 28, 28) float32, ``label`` (n,) int32), CIFAR-100 (``image`` (n, 32, 32, 3) uint8, ``label``,
``coarse_label``), Shakespeare (``snippets`` (n,) bytes). The train and test files share client ids
(the test file holds other examples of the same writers).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.shards import Client, Column, Schema
from tasks.sources.base import Source, SourceError, file_identity, require_file

X_CANDIDATES = ("pixels", "image", "snippets", "tokens", "x")
LABEL_CANDIDATES = ("label", "y")
READER_VERSION = "1"


class H5Source(Source):
    name = "h5"

    def __init__(self, train_path: str | Path, test_path: str | Path | None = None, *, x_column: str = "",
                 label_column: str = "", feature_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None) -> None:
        self.paths = {"train": require_file(train_path, "h5 source")}
        if test_path:
            self.paths["test"] = require_file(test_path, "h5 test source")
        self.splits = tuple(self.paths)
        self._x_column, self._label_column = x_column, label_column
        self.feature_shape = tuple(feature_shape) if feature_shape else None
        self.num_classes = num_classes
        self._schema: Schema | None = None

    def _open(self, split: str):
        import h5py

        path = self.paths[split]
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise SourceError(f"h5 source {path}: not a readable HDF5 file ({e}). Fix: point source_path at a "
                              "TFF h5 ClientData file (examples/<client_id>/<feature>).") from e
        # Listing thousands of client groups grows HDF5's metadata cache by tens of MB: cap it at 2 MB.
        cache = f.id.get_mdc_config()
        cache.set_initial_size, cache.initial_size, cache.min_size, cache.max_size = True, 1 << 20, 1 << 20, 2 << 20
        f.id.set_mdc_config(cache)
        if "examples" not in f or not isinstance(f["examples"], h5py.Group):
            keys = list(f.keys())
            f.close()
            raise SourceError(f"h5 source {path}: no 'examples' group (top-level keys {keys}). Expected TFF's "
                              "layout examples/<client_id>/<feature>.")
        return f

    def identity(self) -> dict[str, Any]:
        return {"reader": f"h5/{READER_VERSION}", "files": {s: file_identity(p) for s, p in self.paths.items()},
                "x_column": self._x_column, "label_column": self._label_column,
                "feature_shape": list(self.feature_shape or ()), "num_classes": self.num_classes}

    def schema(self) -> Schema:
        if self._schema is None:
            self._schema = self._detect()
        return self._schema

    def _detect(self) -> Schema:
        with self._open("train") as f:
            examples = f["examples"]
            if len(examples) == 0:
                raise SourceError(f"h5 source {self.paths['train']}: 'examples' has no clients. "
                                  "Fix: point source_path at a file with at least one client.")
            first_id = next(iter(examples))
            features = {k: v for k, v in examples[first_id].items()}
            x_name = self._x_column or next((c for c in X_CANDIDATES if c in features), "")
            if x_name not in features:
                raise SourceError(f"h5 source {self.paths['train']}: client {first_id!r} has no feature "
                                  f"{x_name or '/'.join(X_CANDIDATES)!r}; it has {sorted(features)}. "
                                  "Fix: set x_column to one of them.")
            label_name = self._label_column or next((c for c in LABEL_CANDIDATES if c in features), None)
            if self._label_column and self._label_column not in features:
                raise SourceError(f"h5 source {self.paths['train']}: client {first_id!r} has no feature "
                                  f"{self._label_column!r}; it has {sorted(features)}. Fix: set label_column.")
            x = features[x_name]
            if x.dtype.kind in "SOU":
                return Schema("text", (Column(x_name, "string"),), x=x_name)
            shape = tuple(x.shape[1:])
            if self.feature_shape:
                if int(np.prod(shape)) != int(np.prod(self.feature_shape)):
                    raise SourceError(f"h5 source: feature_shape {self.feature_shape} does not hold the "
                                      f"{shape} values of {x_name!r}. Fix: a shape with {int(np.prod(shape))} values.")
                shape = self.feature_shape
            kind = "image" if len(shape) in (2, 3) else "vector"
            dtype = "uint8" if x.dtype == np.uint8 else "float32"
            columns = [Column(x_name, dtype, shape)]
            if label_name is not None:
                columns.append(Column(label_name, "int64"))
            return Schema(kind, tuple(columns), x=x_name, label=label_name, num_classes=self.num_classes)

    def client_sizes(self, split: str) -> dict[str, int]:
        """Every client's example count, from dataset shapes only; a client lacking a feature fails here,
        whether or not it is drawn."""
        schema = self.schema()
        with self._open(split) as f:
            sizes = {}
            for cid, group in f["examples"].items():
                for col in schema.columns:
                    if col.name not in group:
                        raise self._missing(split, cid, col.name, group)
                sizes[cid] = int(group[schema.x].shape[0])
            return sizes

    def _missing(self, split: str, cid: str, feature: str, group) -> SourceError:
        return SourceError(f"h5 source {self.paths[split]}: client {cid!r} lacks feature {feature!r} (it has "
                           f"{sorted(group)}). Fix: repair the file or drop that client.")

    def clients(self, split: str) -> Iterator[Client]:
        return self._read(split, None)

    def select(self, split: str, client_ids: set[str]) -> Iterator[Client]:
        return self._read(split, client_ids)

    def _read(self, split: str, only: set[str] | None) -> Iterator[Client]:
        schema = self.schema()
        with self._open(split) as f:
            for cid, group in f["examples"].items():
                if only is not None and cid not in only:
                    continue
                columns = {}
                for col in schema.columns:
                    if col.name not in group:
                        raise self._missing(split, cid, col.name, group)
                    values = group[col.name][()]
                    if col.dtype == "string":
                        values = [_text(v, self.paths[split], cid) for v in values]
                    elif col.shape and values.shape[1:] != col.shape:
                        if int(np.prod(values.shape[1:])) == int(np.prod(col.shape)):
                            values = values.reshape(len(values), *col.shape)
                    columns[col.name] = values
                yield Client(cid, columns)


def _text(value: Any, path: Path, cid: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"h5 source {path}: client {cid!r} has text that is not UTF-8 ({e}).") from e
    return str(value)
