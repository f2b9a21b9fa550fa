"""A generic table (CSV or Parquet): one row per example, a client-id column, feature columns, a label.

Rows of one client need not be adjacent. Grouping is an external hash partition, so memory stays
bounded by one bucket whatever the file's size: pass 1 streams the file in record batches and
appends each row to one of B bucket files (by a hash of its client id); pass 2 reads one bucket at
a time, groups it by client (rows keep their file order) and yields the clients sorted by id.
"""

from __future__ import annotations

import collections
import math
import shutil
import tempfile
import weakref
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.shards import Client, Column, Schema
from tasks.sources.base import Source, SourceError, file_identity, require_file

READER_VERSION = "1"
BUCKET_BYTES = 8 << 20  # target in-memory bytes per bucket
BATCH_BYTES = 8 << 20  # target in-memory bytes per record batch


class TableSource(Source):
    name = "table"

    def __init__(self, train_path: str | Path, test_path: str | Path | None = None, *, client_column: str = "client_id",
                 feature_columns: Sequence[str] = (), label_column: str = "label",
                 feature_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> None:
        self.paths = {"train": require_file(train_path, "table source")}
        if test_path:
            self.paths["test"] = require_file(test_path, "table test source")
        for path in self.paths.values():
            if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
                raise SourceError(f"table source {path}: expected a .csv or .parquet file. Got {path.suffix!r}.")
        self.splits = tuple(self.paths)
        self.client_column, self.label_column = client_column, label_column
        self.feature_columns = list(feature_columns)
        self.feature_shape = tuple(feature_shape) if feature_shape else None
        self.num_classes = num_classes
        self._schema: Schema | None = None
        self._features: list[str] | None = None
        self._buckets: dict[str, tuple[Path, list[int], dict[str, int]]] = {}

    def identity(self) -> dict[str, Any]:
        return {"reader": f"table/{READER_VERSION}", "files": {s: file_identity(p) for s, p in self.paths.items()},
                "client_column": self.client_column, "feature_columns": self.feature_columns,
                "label_column": self.label_column, "feature_shape": list(self.feature_shape or ()),
                "num_classes": self.num_classes}

    # -- reading ----------------------------------------------------------------------------
    def _arrow_schema(self, path: Path) -> pa.Schema:
        try:
            if path.suffix.lower() == ".csv":
                import pyarrow.csv as csv

                with csv.open_csv(path, convert_options=self._csv_options(None)) as reader:
                    return reader.schema
            return pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"table source {path}: cannot be read ({e}). Fix: check that the file is a complete "
                              "CSV/Parquet file.") from e

    def _csv_options(self, columns: list[str] | None):
        import pyarrow.csv as csv

        return csv.ConvertOptions(column_types={self.client_column: pa.string()}, include_columns=columns)

    def _batches(self, path: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
        try:
            if path.suffix.lower() == ".csv":
                import pyarrow.csv as csv

                with csv.open_csv(path, read_options=csv.ReadOptions(block_size=BATCH_BYTES),
                                  convert_options=self._csv_options(columns)) as reader:
                    yield from reader
            else:
                rows = max(1024, BATCH_BYTES // self._row_bytes())
                yield from pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise SourceError(f"table source {path}: reading failed ({e}). Fix: check that every row has the same "
                              "columns and that numbers parse.") from e

    def schema(self) -> Schema:
        if self._schema is None:
            self._schema = self._detect()
        return self._schema

    def _detect(self) -> Schema:
        path = self.paths["train"]
        arrow = self._arrow_schema(path)
        names = arrow.names
        wanted = [self.client_column, self.label_column, *self.feature_columns]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise SourceError(f"table source {path}: missing column(s) {missing}; the file has {names}. Fix: set "
                              "client_column / label_column / feature_columns to existing columns.")
        features = self.feature_columns or [
            n for n in names if n not in (self.client_column, self.label_column)
            and (pa.types.is_integer(arrow.field(n).type) or pa.types.is_floating(arrow.field(n).type))
        ]
        if not features:
            raise SourceError(f"table source {path}: no numeric feature columns besides {self.client_column!r} and "
                              f"{self.label_column!r} (columns {names}). Fix: set feature_columns.")
        bad = [f"{n} ({arrow.field(n).type})" for n in features
               if not (pa.types.is_integer(arrow.field(n).type) or pa.types.is_floating(arrow.field(n).type))]
        if bad:
            raise SourceError(f"table source {path}: feature columns must be numeric. Got {bad}. Fix: encode them "
                              "as numbers or leave them out of feature_columns.")
        label_type = arrow.field(self.label_column).type
        if not pa.types.is_integer(label_type):
            raise SourceError(f"table source {path}: label column {self.label_column!r} must hold integer classes. "
                              f"Got {label_type}. Fix: encode the classes as 0..num_classes-1.")
        shape: tuple[int, ...] = (len(features),)
        if self.feature_shape:
            if int(np.prod(self.feature_shape)) != len(features):
                raise SourceError(f"table source: feature_shape {self.feature_shape} does not hold the {len(features)} "
                                  f"feature columns. Fix: a shape with {len(features)} values.")
            shape = self.feature_shape
        self._features = features
        kind = "image" if len(shape) in (2, 3) else "vector"
        return Schema(kind, (Column("x", "float32", shape), Column("label", "int64")), x="x", label="label",
                      num_classes=self.num_classes)

    def _row_bytes(self) -> int:
        return 8 * (len(self._features or ()) + 1) + 24  # float64 features, int64 label, a short id

    def _memory_bytes(self, path: Path) -> int:
        """The table's size in memory (a compressed Parquet file is many times smaller on disk)."""
        if path.suffix.lower() == ".csv":
            return path.stat().st_size
        return pq.ParquetFile(path).metadata.num_rows * self._row_bytes()

    def _bucketize(self, split: str) -> tuple[Path, list[int], dict[str, int]]:
        """Pass 1, once per split: the rows into hash-bucket files, and every client's row count."""
        if split in self._buckets:
            return self._buckets[split]
        self.schema()
        path = self.paths[split]
        columns = [self.client_column, *self._features, self.label_column]
        buckets = max(1, math.ceil(self._memory_bytes(path) / BUCKET_BYTES))
        scratch = Path(tempfile.mkdtemp(prefix="table-buckets-", dir=self.scratch_dir))
        weakref.finalize(self, shutil.rmtree, scratch, ignore_errors=True)
        writers: dict[int, pq.ParquetWriter] = {}
        sizes: collections.Counter[str] = collections.Counter()
        row = 0
        try:
            for batch in self._batches(path, columns):
                table = pa.Table.from_batches([batch]).select(columns)
                ids = table.column(self.client_column)
                if ids.null_count:
                    first = row + int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
                    raise SourceError(f"table source {path}: row {first + 1} has no {self.client_column!r}. "
                                      "Fix: every row needs a client id.")
                counts = pc.value_counts(ids.combine_chunks())
                sizes.update(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                                      strict=True)))
                table = table.append_column("__row", pa.array(np.arange(row, row + len(table), dtype=np.int64)))
                row += len(table)
                bucket = _bucket_of(ids, buckets)
                for b in np.unique(bucket):
                    part = table.filter(pa.array(bucket == b))
                    if b not in writers:
                        writers[b] = pq.ParquetWriter(scratch / f"{b}.parquet", part.schema)
                    writers[b].write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        self._buckets[split] = (scratch, sorted(writers), dict(sorted(sizes.items())))
        return self._buckets[split]

    def _groups(self, split: str) -> Iterator[tuple[str, pa.Table]]:
        """Pass 2: (client id, its rows) for every client, bucket by bucket; ids sorted within a bucket,
        rows in file order."""
        scratch, buckets, _ = self._bucketize(split)
        for b in buckets:
            table = pq.read_table(scratch / f"{b}.parquet")
            table = table.sort_by([(self.client_column, "ascending"), ("__row", "ascending")])
            ids = table.column(self.client_column).to_numpy(zero_copy_only=False)
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            ends = np.r_[starts[1:], len(ids)]
            for start, end in zip(starts, ends, strict=True):
                yield str(ids[start]), table.slice(start, end - start)

    def client_sizes(self, split: str) -> dict[str, int]:
        return dict(self._bucketize(split)[2])

    def clients(self, split: str) -> Iterator[Client]:
        return self._read(split, None)

    def select(self, split: str, client_ids: set[str]) -> Iterator[Client]:
        return self._read(split, client_ids)

    def _read(self, split: str, only: set[str] | None) -> Iterator[Client]:
        shape = self.schema().column("x").shape
        for cid, rows in self._groups(split):
            if only is not None and cid not in only:
                continue
            labels = rows.column(self.label_column)
            if labels.null_count:
                raise SourceError(f"table source {self.paths[split]}: client {cid!r} has rows without a label. Fix: "
                                  "drop unlabelled rows.")
            x = np.stack([_float_column(rows.column(f)) for f in self._features], axis=1)
            yield Client(cid, {"x": x.reshape(len(x), *shape), "label": labels.to_numpy()})


def _float_column(column: pa.ChunkedArray) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN (validation names them)


def _bucket_of(ids: pa.ChunkedArray, buckets: int) -> np.ndarray:
    if buckets == 1:
        return np.zeros(len(ids), dtype=np.int64)
    encoded = pc.dictionary_encode(ids).combine_chunks()
    codes = [zlib.crc32(str(v).encode()) % buckets for v in encoded.dictionary.to_pylist()]
    return np.asarray(codes, dtype=np.int64)[encoded.indices.to_numpy(zero_copy_only=False)]
