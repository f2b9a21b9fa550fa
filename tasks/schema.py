"""What a staged example holds: typed columns (:class:`Column`), a data set's :class:`Schema` (kind,
model-input and label columns), one client's examples (:class:`Client`), and the checks every writer
applies to client ids and column lengths. The Parquet encoding of each column lives here too
(``Column.to_arrow`` / ``from_arrow``); :mod:`tasks.shards` lays the columns out in shards.

numpy and pyarrow only: the trainer imports it in the TensorFlow environment.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

CLIENT_ID = "client_id"
KINDS = ("image", "vector", "text", "ratings")
NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "uint8", "int16", "uint16", "int8")
MAX_CLIENT_ID_BYTES = 256


class Error(Exception):
    """Base class for shard errors."""


class SchemaError(Error, ValueError):
    """Examples do not match the declared schema (dtype, shape, columns, lengths)."""


class ClientIdError(Error, ValueError):
    """A client id is empty, too long, or looks like a path (separators, '..', control characters)."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One per-example field: ``dtype`` is a numpy dtype name or ``'string'``; ``shape`` per example."""

    name: str
    dtype: str
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype != "string" and self.dtype not in NUMERIC_DTYPES:
            raise SchemaError(f"column {self.name!r}: dtype must be one of {[*NUMERIC_DTYPES, 'string']}. "
                              f"Got {self.dtype!r}.")
        if self.dtype == "string" and self.shape:
            raise SchemaError(f"column {self.name!r}: a string column holds one string per example. "
                              f"Got shape {self.shape}.")
        if any(d < 1 for d in self.shape):
            raise SchemaError(f"column {self.name!r}: every dimension must be >= 1. Got shape {self.shape}.")
        if self.name == CLIENT_ID:
            raise SchemaError(f"column name {CLIENT_ID!r} is reserved for the client id.")

    @property
    def encoding(self) -> str:
        if self.dtype == "string":
            return "string"
        return "fixed_size_binary" if self.shape else "plain"

    @property
    def nbytes(self) -> int:
        """Bytes per example (numeric columns)."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def arrow_type(self) -> pa.DataType:
        if self.encoding == "string":
            return pa.string()
        if self.encoding == "fixed_size_binary":
            return pa.binary(self.nbytes)
        return pa.from_numpy_dtype(np.dtype(self.dtype))

    def to_arrow(self, values: Any, client_id: str) -> pa.Array:
        """Checks ``values`` against the column (dtype kind, shape) and encodes them."""
        if self.encoding == "string":
            strings = list(values)
            bad = [v for v in strings[:1000] if not isinstance(v, str)]
            if bad:
                raise SchemaError(f"client {client_id!r}, column {self.name!r}: expected text (str). "
                                  f"Got {type(bad[0]).__name__} values, e.g. {bad[0]!r}.")
            return pa.array(strings, pa.string())
        array = np.asarray(values)
        if array.shape[1:] != self.shape:
            raise SchemaError(f"client {client_id!r}, column {self.name!r}: expected examples of shape "
                              f"{self.shape}. Got {array.shape[1:]} (array shape {array.shape}).")
        target = np.dtype(self.dtype)
        if array.dtype.kind not in "biuf":
            raise SchemaError(f"client {client_id!r}, column {self.name!r}: expected numbers ({self.dtype}). "
                              f"Got dtype {array.dtype}, e.g. {array.reshape(-1)[:3].tolist()}.")
        if target.kind in "iu" and array.size:
            if array.dtype.kind == "f":
                whole = np.isfinite(array) & (array == np.round(array))
                if not whole.all():
                    raise SchemaError(f"client {client_id!r}, column {self.name!r}: expected whole numbers "
                                      f"({self.dtype}). Got e.g. {array[~whole][:3].tolist()}.")
            info = np.iinfo(target)
            low, high = array.min(), array.max()
            if low < info.min or high > info.max:
                raise SchemaError(f"client {client_id!r}, column {self.name!r}: values must fit {self.dtype} "
                                  f"[{info.min}, {info.max}]. Got range [{low}, {high}].")
        array = np.ascontiguousarray(array, dtype=target.newbyteorder("<"))
        if self.encoding == "plain":
            return pa.array(array.astype(target, copy=False))
        return pa.FixedSizeBinaryArray.from_buffers(self.arrow_type(), len(array), [None, pa.py_buffer(array)])

    def from_arrow(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        if self.encoding == "string":
            return np.array([v for c in chunks for v in c.to_pylist()], dtype=object)
        if self.encoding == "plain":
            parts = [c.to_numpy(zero_copy_only=False) for c in chunks]
            return np.concatenate(parts).astype(self.dtype, copy=False) if parts else np.zeros(0, self.dtype)
        dtype = np.dtype(self.dtype).newbyteorder("<")
        parts = []
        for c in chunks:
            width = c.type.byte_width  # == self.nbytes (reshape checks it), without np.prod per call
            raw = np.frombuffer(c.buffers()[1], dtype=np.uint8, count=len(c) * width, offset=c.offset * width)
            parts.append(raw.view(dtype).reshape(len(c), *self.shape))
        if not parts:
            return np.zeros((0, *self.shape), dtype=self.dtype)
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out.astype(self.dtype, copy=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "encoding": self.encoding}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Column:
        return cls(value["name"], value["dtype"], tuple(value.get("shape", ())))


@dataclasses.dataclass(frozen=True)
class Schema:
    """What one example of a staged data set holds and what each column means.

    ``kind``: ``image`` (``x`` is an image: (h, w) or (h, w, c)), ``vector`` (``x`` is a feature
    vector), ``text`` (``x`` is a string), ``ratings`` (user-item interactions; no ``x``).
    ``x`` names the model-input column and ``label`` the class column (``num_classes`` classes).
    """

    kind: str
    columns: tuple[Column, ...]
    x: str | None = None
    label: str | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        if self.kind not in KINDS:
            raise SchemaError(f"kind must be one of {list(KINDS)}. Got {self.kind!r}.")
        names = [c.name for c in self.columns]
        if not names or len(set(names)) != len(names):
            raise SchemaError(f"columns must be non-empty with distinct names. Got {names}.")
        for role in ("x", "label"):
            name = getattr(self, role)
            if name is not None and name not in names:
                raise SchemaError(f"{role} column {name!r} is not among the columns {names}.")
        if self.label is not None:
            label = self.column(self.label)
            if label.dtype not in ("int64", "int32", "int16", "int8", "uint8", "uint16") or label.shape:
                raise SchemaError(f"label column {self.label!r} must be a scalar integer. Got {label.dtype} "
                                  f"{label.shape}.")
            if self.num_classes is not None and self.num_classes < 1:
                raise SchemaError(f"num_classes must be >= 1 (or None: inferred from the labels). "
                                  f"Got {self.num_classes}.")

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"no column {name!r}; the columns are {[c.name for c in self.columns]}.")

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(CLIENT_ID, pa.string()), *((c.name, c.arrow_type()) for c in self.columns)])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "columns": [c.to_json() for c in self.columns], "x": self.x,
                "label": self.label, "num_classes": self.num_classes}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Schema:
        return cls(value["kind"], tuple(Column.from_json(c) for c in value["columns"]), value.get("x"),
                   value.get("label"), value.get("num_classes"))


@dataclasses.dataclass(frozen=True)
class Client:
    """One client's examples, column by column (every column has the same length)."""

    client_id: str
    columns: Mapping[str, Any]

    @property
    def num_examples(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


@dataclasses.dataclass(frozen=True)
class ClientExamples:
    """A client of an ``image``/``vector`` data set as model input ``x`` and integer labels ``y``."""

    client_id: str
    x: np.ndarray
    y: np.ndarray


def check_client_id(client_id: Any) -> str:
    """Returns ``client_id`` if it is usable as data; raises ClientIdError naming the problem.

    Ids are never file names here, but they travel into logs, MLflow tables and other tools' paths:
    refuse what looks like a path or a control sequence. Any other Unicode is kept as is.
    """
    if not isinstance(client_id, str):
        raise ClientIdError(f"client id must be a string. Got {client_id!r} ({type(client_id).__name__}).")
    shown = client_id if len(client_id) <= 80 else client_id[:77] + "..."
    if not client_id.strip():
        raise ClientIdError(f"client id must be non-blank. Got {client_id!r}. Fix: give every client an id.")
    if len(client_id.encode()) > MAX_CLIENT_ID_BYTES:
        raise ClientIdError(f"client id must be at most {MAX_CLIENT_ID_BYTES} bytes (UTF-8). Got "
                            f"{len(client_id.encode())} bytes: {shown!r}. Fix: shorten or hash the ids.")
    if "/" in client_id or "\\" in client_id or client_id in (".", "..") or ".." in client_id.split("/"):
        raise ClientIdError(f"client id must not contain path separators or be '.'/'..'. Got {shown!r}. "
                            "Fix: replace '/' and '\\' in the source's ids.")
    if client_id.startswith("..") or "/.." in client_id or "..\\" in client_id:
        raise ClientIdError(f"client id must not contain '..' path segments. Got {shown!r}.")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in client_id):
        raise ClientIdError(f"client id must not contain control or invisible format characters. Got {shown!r}.")
    return client_id


def check_lengths(client: Client) -> int:
    """The client's example count; SchemaError when its columns disagree."""
    lengths = {name: len(values) for name, values in client.columns.items()}
    if len(set(lengths.values())) > 1:
        raise SchemaError(f"client {client.client_id!r}: columns have different lengths {lengths}. Fix: every "
                          "feature of a client needs one value per example.")
    return next(iter(lengths.values()), 0)
