"""The staged-data layout: Parquet shards with one row group per client, plus ``manifest.json``.

A shard holds a run of clients, each client's examples in exactly one row group, so reading one client
is one row-group read at a byte range the manifest records (no scan of the data set). Column encodings,
chosen by measurement (``bench/parquet_layout.py``, numbers in the README):

- a tensor per example (an image, a feature vector) -> ``fixed_size_binary`` of its raw little-endian
  bytes: decoding is a zero-copy ``np.frombuffer``, ~10x faster than a Parquet list column;
- a scalar per example (label, item id, rating) -> the plain Parquet type;
- text -> a UTF-8 ``string`` column.

Every row also carries its ``client_id`` (dictionary-encoded, costs almost nothing) so a shard is
self-describing and validation can name the client of a bad value. Client ids are data: file names
are ``<split>-NNNNN.parquet`` and never contain an id.

Used by the stage step (writing, streaming one client at a time) and by the trainer (reading);
numpy and pyarrow only.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks import atomic
from tasks.schema import (  # re-exported: shards is the format's public face
    CLIENT_ID,
    KINDS,
    MAX_CLIENT_ID_BYTES,
    NUMERIC_DTYPES,
    Client,
    ClientExamples,
    ClientIdError,
    Column,
    Error,
    Schema,
    SchemaError,
    check_client_id,
    check_lengths,
)

__all__ = ["CLIENT_ID", "KINDS", "MANIFEST", "MAX_CLIENT_ID_BYTES", "NUMERIC_DTYPES", "Client", "ClientExamples",
           "ClientIdError", "Column", "DatasetWriter", "Error", "Manifest", "Schema", "SchemaError",
           "UnknownClientError", "check_client_id", "check_lengths", "manifest_digest", "row_group_ranges",
           "write_dataset"]

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# A new shard starts after this many clients or bytes, whichever comes first.
CLIENTS_PER_SHARD = 256
SHARD_TARGET_BYTES = 64 << 20
COMPRESSION = "none"  # measured: zstd makes image shards 5-6x smaller but one-client reads 1.3x slower (README)


class UnknownClientError(Error, KeyError):
    """The manifest has no such client in that split."""



@dataclasses.dataclass
class _ShardState:
    name: str
    writer: pq.ParquetWriter
    clients: int = 0
    bytes: int = 0


class DatasetWriter:
    """Streams clients into shards: ``add`` one client at a time, then ``finish`` writes the manifest.

    Memory stays at about one client's examples, whatever the data set's size. ``finish`` writes
    ``manifest.json`` last: its presence marks a complete data set.
    """

    def __init__(self, out_dir: Path, schema: Schema, *, clients_per_shard: int = CLIENTS_PER_SHARD,
                 shard_target_bytes: int = SHARD_TARGET_BYTES, compression: str = COMPRESSION) -> None:
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.arrow_schema = schema.arrow_schema()
        self.clients_per_shard = clients_per_shard
        self.shard_target_bytes = shard_target_bytes
        self.compression = compression
        self._open: dict[str, _ShardState] = {}
        self._shard_count: dict[str, int] = {}
        self._entries: dict[str, list[dict[str, Any]]] = {}
        self._ids: dict[str, set[str]] = {}
        self._closed: dict[str, concurrent.futures.Future] = {}
        self._max_label = -1
        # Closed shards are checksummed in the background while the next one is written.
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-sha256")

    def add(self, split: str, client: Client) -> None:
        client_id = check_client_id(client.client_id)
        ids = self._ids.setdefault(split, set())
        if client_id in ids:
            raise SchemaError(f"client {client_id!r} appears twice in split {split!r}. Fix: make client ids "
                              "unique in the source (or merge the duplicate's examples).")
        table = self._table(client)
        if table.num_rows == 0:
            raise SchemaError(f"client {client_id!r} in split {split!r} has no examples. Fix: drop empty clients "
                              "from the source.")
        state = self._shard(split)
        state.writer.write_table(table, row_group_size=table.num_rows)
        entry: dict[str, Any] = {"id": client_id, "shard": state.name, "row_group": state.clients,
                                 "num_examples": table.num_rows}
        if self.schema.label is not None:
            labels = np.asarray(client.columns[self.schema.label])
            low, high = int(labels.min()), int(labels.max())
            if low < 0:
                raise SchemaError(f"client {client_id!r}: labels must be >= 0. Got {labels[labels < 0][:5].tolist()}. "
                                  "Fix: map the source's classes to 0..num_classes-1.")
            entry["label_counts"] = _label_counts(labels, high)
            self._max_label = max(self._max_label, high)
        self._entries.setdefault(split, []).append(entry)
        ids.add(client_id)
        state.clients += 1
        state.bytes += table.nbytes
        if state.clients >= self.clients_per_shard or state.bytes >= self.shard_target_bytes:
            self._close(split)

    def _table(self, client: Client) -> pa.Table:
        names = [c.name for c in self.schema.columns]
        missing = [n for n in names if n not in client.columns]
        extra = [n for n in client.columns if n not in names]
        if missing or extra:
            raise SchemaError(f"client {client.client_id!r}: columns {sorted(client.columns)} do not match the "
                              f"schema's {names} (missing {missing}, unexpected {extra}).")
        n = check_lengths(client)
        arrays = [pa.repeat(pa.scalar(client.client_id, pa.string()), n)]  # dictionary-encoded on write
        arrays += [c.to_arrow(client.columns[c.name], client.client_id) for c in self.schema.columns]
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)

    def _shard(self, split: str) -> _ShardState:
        if split not in self._open:
            index = self._shard_count.get(split, 0)
            self._shard_count[split] = index + 1
            name = f"{split}-{index:05d}.parquet"
            writer = pq.ParquetWriter(self.out_dir / name, self.arrow_schema, compression=self.compression,
                                      use_dictionary=[CLIENT_ID], write_statistics=[CLIENT_ID])
            self._open[split] = _ShardState(name, writer)
        return self._open[split]

    def _close(self, split: str) -> None:
        state = self._open.pop(split)
        state.writer.close()
        self._closed[state.name] = self._hasher.submit(_file_facts, self.out_dir / state.name)

    def abort(self) -> None:
        for split in list(self._open):
            self._open.pop(split).writer.close()
        self._hasher.shutdown(wait=True, cancel_futures=True)

    def finish(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Closes every shard, records byte ranges and checksums, writes ``manifest.json``."""
        for split in list(self._open):
            self._close(split)
        files: dict[str, dict[str, Any]] = {}
        ranges: dict[str, list[tuple[int, int]]] = {}
        try:
            for name, future in self._closed.items():
                files[name], ranges[name] = future.result()
        finally:
            self._hasher.shutdown(wait=True, cancel_futures=True)
        splits = {}
        for split, entries in self._entries.items():
            for e in entries:
                e["offset"], e["length"] = ranges[e["shard"]][e["row_group"]]
            splits[split] = {"num_clients": len(entries), "num_examples": sum(e["num_examples"] for e in entries),
                             "clients": entries}
        schema = self.schema
        if schema.label is not None and schema.num_classes is None:  # inferred: 0..max label seen
            schema = dataclasses.replace(schema, num_classes=max(1, self._max_label + 1))
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            **metadata,
            "schema": schema.to_json(),
            "num_classes": schema.num_classes,
            "layout": {"row_group": "one per client", "compression": self.compression,
                       "client_id_column": CLIENT_ID},
            "splits": splits,
            "files": files,
        }
        manifest["content_sha256"] = manifest_digest(manifest)
        atomic.write_json(self.out_dir / MANIFEST, manifest, compact=True)  # large: one line, no indent
        return manifest


def _file_facts(path: Path) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """A closed shard's manifest entry (SHA-256, size) and its row groups' byte ranges."""
    return ({"sha256": atomic.sha256_file(path), "bytes": path.stat().st_size},
            row_group_ranges(pq.read_metadata(path)))


def manifest_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON (without its own ``content_sha256``): validation
    recomputes it, so a manifest edited after staging is caught."""
    body = {k: v for k, v in data.items() if k != "content_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def row_group_ranges(metadata: pq.FileMetaData) -> list[tuple[int, int]]:
    """(byte offset, byte length) of every row group's column chunks in a Parquet file."""
    ranges = []
    for i in range(metadata.num_row_groups):
        rg = metadata.row_group(i)
        starts, ends = [], []
        for j in range(rg.num_columns):
            col = rg.column(j)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            starts.append(start)
            ends.append(start + col.total_compressed_size)
        ranges.append((int(min(starts)), int(max(ends) - min(starts))))
    return ranges


def _label_counts(y: np.ndarray, high: int) -> dict[str, int]:
    if high < 1 << 16:  # the usual case: a dense count is faster than np.unique's sort
        counts = np.bincount(y.astype(np.int64, copy=False), minlength=high + 1)
        return {str(label): int(counts[label]) for label in np.flatnonzero(counts)}
    labels, counts = np.unique(y, return_counts=True)
    return {str(int(label)): int(count) for label, count in zip(labels, counts, strict=True)}


def write_dataset(out_dir: Path, splits: Mapping[str, Iterable[Client]], schema: Schema, *,
                  metadata: Mapping[str, Any], **writer_options: Any) -> dict[str, Any]:
    """Writes every split's clients (streamed) and then the manifest."""
    writer = DatasetWriter(out_dir, schema, **writer_options)
    try:
        for split, clients in splits.items():
            for client in clients:
                writer.add(split, client)
    except BaseException:
        writer.abort()
        raise
    return writer.finish(metadata)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of a staged data set, and fast reads of one client."""

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
    def schema(self) -> Schema:
        cache = self.__dict__.setdefault("_cache", {})
        if "schema" not in cache:
            cache["schema"] = Schema.from_json(self.data["schema"])
        return cache["schema"]

    @property
    def kind(self) -> str:
        return self.schema.kind

    @property
    def x_feature(self) -> Column:
        if self.schema.x is None:
            raise SchemaError(f"data set {self.root} ({self.kind}) has no model-input column x.")
        return self.schema.column(self.schema.x)

    @property
    def num_classes(self) -> int:
        return int(self.data["num_classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.data["splits"])

    def clients(self, split: str) -> list[dict[str, Any]]:
        return self.data["splits"][split]["clients"] if split in self.data["splits"] else []

    def client_ids(self, split: str) -> list[str]:
        return [c["id"] for c in self.clients(split)]

    def client_entry(self, split: str, client_id: str) -> dict[str, Any]:
        index = self._index(split)
        if client_id not in index:
            raise UnknownClientError(f"No client {client_id!r} in split {split!r} of {self.root}.")
        return index[client_id]

    def _index(self, split: str) -> dict[str, dict[str, Any]]:
        cache = self.__dict__.setdefault("_client_index", {})
        if split not in cache:
            cache[split] = {c["id"]: c for c in self.clients(split)}
        return cache[split]

    def _parquet(self, shard: str) -> pq.ParquetFile:
        files = self.__dict__.setdefault("_files", {})
        if shard not in files:
            files[shard] = pq.ParquetFile(self.root / shard, memory_map=True)
        return files[shard]

    def read_columns(self, split: str, client_id: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One client's columns as numpy arrays: one row-group read of one (memory-mapped) shard.

        Single-threaded: a client's row group is a few column chunks, and pyarrow's thread pool costs
        more than it saves (25-30 % faster per read, measured with ``bench/client_read.py``)."""
        entry = self.client_entry(split, client_id)
        schema = self.schema
        names = list(columns) if columns is not None else [c.name for c in schema.columns]
        table = self._parquet(entry["shard"]).read_row_group(entry["row_group"], columns=names, use_threads=False)
        return {name: schema.column(name).from_arrow(table.column(name)) for name in names}

    def read_client(self, split: str, client_id: str) -> ClientExamples:
        """One client's model input ``x`` and labels ``y`` (``image``/``vector`` data sets)."""
        x, y = self.x_feature.name, self.schema.label
        if y is None:
            raise SchemaError(f"data set {self.root} ({self.kind}) has no label column.")
        cols = self.read_columns(split, client_id, [x, y])
        return ClientExamples(client_id, cols[x], cols[y].astype(np.int64, copy=False))

    def read_split(self, split: str, client_ids: Iterable[str] | None = None) -> ClientExamples:
        """All examples of ``split`` (or of ``client_ids``) concatenated, client_id ``'*'``."""
        ids = list(client_ids) if client_ids is not None else self.client_ids(split)
        parts = [self.read_client(split, cid) for cid in ids]
        if not parts:
            raise UnknownClientError(f"split {split!r} of {self.root} has no clients.")
        return ClientExamples("*", np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
