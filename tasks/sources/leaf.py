"""LEAF JSON files (Caldas et al. 2018): ``{"users": [...], "num_samples": [...], "user_data":
{user: {"x": [...], "y": [...]}}}``, one or many files (LEAF writes ``all_data_<i>.json`` chunks).

Numeric ``x`` (FEMNIST: 784 floats per example, give ``feature_shape`` 28,28 for an image) with
integer ``y`` (classes) is staged as ``image``/``vector`` data; string ``x`` with string ``y``
(LEAF Shakespeare: 80 characters and the next one) as ``text`` with a ``target`` column.
Every user's ``num_samples`` must agree with its data: LEAF's own tools trust it, we check it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.shards import Client, Column, Schema
from tasks.sources.base import Source, SourceError, file_identity, require_file

READER_VERSION = "1"


def _json_files(path: Path, what: str) -> list[Path]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{what} {path}: no *.json files in the directory. Fix: point source_path at a LEAF "
                          "data directory (e.g. data/train) or one of its JSON files.")
    return files


class LeafSource(Source):
    name = "leaf"

    def __init__(self, train_path: str | Path, test_path: str | Path | None = None, *,
                 feature_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> None:
        self.files = {"train": _json_files(require_file(train_path, "LEAF source"), "LEAF source")}
        if test_path:
            self.files["test"] = _json_files(require_file(test_path, "LEAF test source"), "LEAF test source")
        self.splits = tuple(self.files)
        self.feature_shape = tuple(feature_shape) if feature_shape else None
        self.num_classes = num_classes
        self._schema: Schema | None = None

    def identity(self) -> dict[str, Any]:
        return {"reader": f"leaf/{READER_VERSION}",
                "files": {s: [file_identity(p) for p in fs] for s, fs in self.files.items()},
                "feature_shape": list(self.feature_shape or ()), "num_classes": self.num_classes}

    def _load(self, path: Path) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(f"LEAF source {path}: not valid JSON ({e}). Fix: re-export or re-download the file.") from e
        if not isinstance(data, dict):
            raise SourceError(f"LEAF source {path}: expected a JSON object. Got {type(data).__name__}.")
        missing = [k for k in ("users", "num_samples", "user_data") if k not in data]
        if missing:
            raise SourceError(f"LEAF source {path}: missing key(s) {missing}; has {sorted(data)}. Expected LEAF's "
                              "{'users', 'num_samples', 'user_data'}.")
        users, counts = data["users"], data["num_samples"]
        if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
            raise SourceError(f"LEAF source {path}: 'users' ({_length(users)}) and 'num_samples' "
                              f"({_length(counts)}) must be lists of the same length.")
        return data

    def _users(self, split: str) -> Iterator[tuple[Path, dict[str, Any], str, int]]:
        seen: dict[str, Path] = {}
        for path in self.files[split]:
            data = self._load(path)
            for user, count in zip(data["users"], data["num_samples"], strict=True):
                if not isinstance(user, str):
                    raise SourceError(f"LEAF source {path}: user ids must be strings. Got {user!r}.")
                if user in seen:
                    raise SourceError(f"LEAF source {path}: user {user!r} appears twice (also in {seen[user].name}). "
                                      "Fix: de-duplicate users across the LEAF files.")
                seen[user] = path
                yield path, data, user, count

    def schema(self) -> Schema:
        if self._schema is None:
            path, data, user, _ = next(iter(self._users("train")), (None, None, None, None))
            if path is None:
                raise SourceError(f"LEAF source {self.files['train'][0]}: no users. Fix: a file with at least one user.")
            x, y = self._user_data(path, data, user, None)
            self._schema = self._schema_of(path, user, x, y)
        return self._schema

    def _schema_of(self, path: Path, user: str, x: list, y: list) -> Schema:
        if not x:
            raise SourceError(f"LEAF source {path}: user {user!r} has no examples.")
        first = x[0]
        if isinstance(first, str):
            return Schema("text", (Column("x", "string"), Column("target", "string")), x="x")
        array = np.asarray(first)
        if array.dtype.kind not in "iuf" or array.ndim == 0:
            raise SourceError(f"LEAF source {path}: user {user!r}: x must be lists of numbers or strings. Got "
                              f"{str(first)[:80]!r}. (Sent140's [id, date, query, user, text] rows are not supported.)")
        if y and not (isinstance(y[0], int) or (isinstance(y[0], float) and float(y[0]).is_integer())):
            raise SourceError(f"LEAF source {path}: user {user!r}: numeric x needs integer class labels in y. Got "
                              f"{y[0]!r}. Fix: map the labels to 0..num_classes-1.")
        shape = tuple(array.shape)
        if self.feature_shape:
            if int(np.prod(self.feature_shape)) != int(np.prod(shape)):
                raise SourceError(f"LEAF source: feature_shape {self.feature_shape} does not hold the {shape} "
                                  f"values of x. Fix: a shape with {int(np.prod(shape))} values.")
            shape = self.feature_shape
        kind = "image" if len(shape) in (2, 3) else "vector"
        return Schema(kind, (Column("x", "float32", shape), Column("y", "int64")), x="x", label="y",
                      num_classes=self.num_classes)

    def _user_data(self, path: Path, data: dict, user: str, count: int | None) -> tuple[list, list]:
        record = data["user_data"].get(user)
        if not isinstance(record, dict) or "x" not in record or "y" not in record:
            raise SourceError(f"LEAF source {path}: user {user!r} is listed in 'users' but has no "
                              "user_data entry with 'x' and 'y'.")
        x, y = record["x"], record["y"]
        if len(x) != len(y):
            raise SourceError(f"LEAF source {path}: user {user!r} has {len(x)} x but {len(y)} y values.")
        if count is not None and count != len(x):
            raise SourceError(f"LEAF source {path}: user {user!r}: num_samples says {count}, user_data has "
                              f"{len(x)} examples. Fix: regenerate the file (LEAF's num_samples must match).")
        return x, y

    def client_sizes(self, split: str) -> dict[str, int]:
        return {user: count for _, _, user, count in self._users(split)}

    def clients(self, split: str) -> Iterator[Client]:
        return self._read(split, None)

    def select(self, split: str, client_ids: set[str]) -> Iterator[Client]:
        return self._read(split, client_ids)

    def _read(self, split: str, only: set[str] | None) -> Iterator[Client]:
        schema = self.schema()
        for path, data, user, count in self._users(split):
            if only is not None and user not in only:
                continue
            x, y = self._user_data(path, data, user, count)
            if schema.kind == "text":
                bad = next((v for v in [*x, *y] if not isinstance(v, str)), None)
                if bad is not None:
                    raise SourceError(f"LEAF source {path}: user {user!r}: expected strings in x and y. Got {bad!r}.")
                yield Client(user, {"x": x, "target": y})
                continue
            try:
                xs = np.asarray(x, dtype=np.float64)
            except (ValueError, TypeError) as e:
                raise SourceError(f"LEAF source {path}: user {user!r}: x is not a rectangular array of numbers "
                                  f"({e}).") from e
            shape = schema.column("x").shape
            if xs.ndim < 1 or int(np.prod(xs.shape[1:])) != int(np.prod(shape)):
                raise SourceError(f"LEAF source {path}: user {user!r}: examples of shape {xs.shape[1:]}, expected "
                                  f"{int(np.prod(shape))} values each.")
            yield Client(user, {"x": xs.reshape(len(xs), *shape), "y": np.asarray(y)})


def _length(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else type(value).__name__
