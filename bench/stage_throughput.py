"""Benchmark: staging throughput of the shard writer against a raw ``pyarrow.parquet.write_table``.

``shards.write_dataset`` (the per-client streaming ``DatasetWriter``: validation, one row group per
client, the dictionary-encoded client_id column, label counts, sha256 of every shard, the manifest)
against one ``pq.write_table`` of the same arrays already concatenated (one table, the same
fixed_size_binary image column, the same int64 labels, plain encoding, no compression, no
statistics), in examples/s and MB/s of example bytes. Files go to tmpfs (/dev/shm) by default: this
measures the writers' CPU cost, not the shared disk's writeback (``--dir`` to choose). Two data sets: EMNIST-like (3,000 clients x 20..300 examples of 28x28 float32) and
digits-like (3,594 clients x 50 examples of 8x8: 100x scikit-learn's digits, many small clients).
Runs are interleaved (ours, raw, ...), median of 5; the writer's time is then broken down by
component (timed wrappers in this process; tasks/shards.py is not changed). Two more raw rows
isolate the layout's own price: the client_id column with one row group per client (the floor for
any writer of this layout), and whole clients packed into row groups of up to 1 MB.

Target: ours >= 0.8x the raw write's throughput. Ratios are measured in this run: the machine is
shared and noisy, compare only numbers printed together.

    .venv/bin/python bench/stage_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _datagen  # noqa: E402

from tasks import atomic, shards  # noqa: E402

REPEATS = 5  # 3 with --quick


def timed(fn, tmp: Path) -> float:
    """Seconds of ``fn(a new empty directory)``; the directory is removed afterwards."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    try:
        start = time.perf_counter()
        fn(out)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out)


def run(name: str, kind: str, num_clients: int, tmp: Path, repeats: int) -> float:
    items = list(_datagen.clients(kind, num_clients))
    shape = items[0][1].shape[1:]
    schema = shards.Schema(
        "image",
        (shards.Column("pixels", "float32", shape), shards.Column("label", "int64")),
        x="pixels",
        label="label",
        num_classes=10,
    )
    clients = [shards.Client(cid, {"pixels": x, "label": y}) for cid, x, y in items]
    x = np.concatenate([x for _, x, _ in items])
    y = np.concatenate([y for _, _, y in items])
    sizes = [len(y) for _, _, y in items]
    n, nbytes = len(y), x.nbytes + y.nbytes
    fsb = pa.FixedSizeBinaryArray.from_buffers(pa.binary(x[0].nbytes), n, [None, pa.py_buffer(x)])
    raw_table = pa.table({"pixels": fsb, "label": pa.array(y)})
    ids = pa.DictionaryArray.from_arrays(
        pa.array(np.repeat(np.arange(len(items), dtype=np.int32), sizes)), pa.array([cid for cid, _, _ in items])
    ).cast(pa.string())
    id_table = pa.table({"client_id": ids, "pixels": fsb, "label": pa.array(y)})
    starts = np.r_[0, np.cumsum(sizes)[:-1]].tolist()
    per_client = [id_table.slice(s, k) for s, k in zip(starts, sizes, strict=True)]
    packed, first, rows, size = [], 0, 0, 0  # row groups of whole clients, up to 1 MB each
    for i, k in enumerate(sizes):
        if rows and size + k * (x[0].nbytes + 8) > 1 << 20:
            packed.append(id_table.slice(starts[first], rows))
            first, rows, size = i, 0, 0
        rows += k
        size += k * (x[0].nbytes + 8)
    packed.append(id_table.slice(starts[first], rows))

    def ours(out: Path) -> None:
        shards.write_dataset(out, {"train": clients}, schema, metadata={"fingerprint": "bench"})

    def raw(out: Path) -> None:
        pq.write_table(raw_table, out / "raw.parquet", compression="none", use_dictionary=False, write_statistics=False)

    def raw_ids(out: Path) -> None:
        pq.write_table(
            id_table,
            out / "raw.parquet",
            compression="none",
            use_dictionary=["client_id"],
            write_statistics=["client_id"],
        )

    def raw_row_groups(out: Path, tables=per_client) -> None:
        with pq.ParquetWriter(
            out / "raw.parquet",
            id_table.schema,
            compression="none",
            use_dictionary=["client_id"],
            write_statistics=["client_id"],
        ) as writer:
            for t in tables:
                writer.write_table(t, row_group_size=t.num_rows)

    variants = {
        "shards.write_dataset (ours)": ours,
        "raw pq.write_table(x, y)  [baseline]": raw,
        "raw + client_id column (dictionary)": raw_ids,
        "raw + client_id, one row group per client": raw_row_groups,
        f"raw + client_id, {len(packed):,} row groups <= 1 MB": functools.partial(raw_row_groups, tables=packed),
    }
    times = collections.defaultdict(list)
    for _ in range(repeats):
        for label, fn in variants.items():
            times[label].append(timed(fn, tmp))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["raw pq.write_table(x, y)  [baseline]"]
    print(
        f"\n{name}: {len(items):,} clients, {n:,} examples of {shape} float32, {nbytes / 1e6:,.0f} MB "
        f"(median of {repeats}, interleaved)"
    )
    print(f"  {'':<46}{'s':>6}{'examples/s':>13}{'MB/s':>9}{'throughput vs raw':>19}")
    for label, s in med.items():
        print(f"  {label:<46}{s:6.2f}{n / s:13,.0f}{nbytes / 1e6 / s:9.0f}{base / s:18.2f}x")
    ratio = base / med["shards.write_dataset (ours)"]
    same_layout = med["raw + client_id, one row group per client"] / med["shards.write_dataset (ours)"]
    print(
        f"  ours / raw throughput: {ratio:.2f}x (target >= 0.8x): {'PASS' if ratio >= 0.8 else 'FAIL'}; "
        f"ours / raw with the same layout (client_id, a row group per client): {same_layout:.2f}x"
    )
    breakdown(clients, schema, tmp, med["shards.write_dataset (ours)"])
    return ratio


def breakdown(clients: list, schema, tmp: Path, total_s: float) -> None:
    """Where the writer's time goes: timed wrappers around its parts, one more run."""
    spent: dict[str, float] = collections.defaultdict(float)
    patches = [
        (shards, "check_client_id", "client id checks"),
        (shards.DatasetWriter, "_table", "_table: validate + encode (incl. client_id column)"),
        (pq.ParquetWriter, "write_table", "ParquetWriter.write_table, one row group per client"),
        (shards.DatasetWriter, "_close", "closing shards (footers)"),
        (shards, "_label_counts", "label counts (np.unique)"),
        (atomic, "sha256_file", "finish: sha256 of every shard"),
        (shards, "row_group_ranges", "finish: row-group byte ranges"),
        (pq, "ParquetFile", "finish: re-open shards' footers"),
        (atomic, "write_json", "finish: manifest.json write (+fsync)"),
        (shards, "manifest_digest", "finish: manifest digest"),
    ]
    originals = []

    def wrap(fn, label):
        @functools.wraps(fn)
        def inner(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t0

        return inner

    for owner, attr, label in patches:
        if hasattr(owner, attr):
            originals.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, wrap(getattr(owner, attr), label))
    try:
        t0 = time.perf_counter()
        for c in clients:  # the client_id part of _table, separately
            n = c.num_examples
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([c.client_id])).cast(pa.string())
        id_s = time.perf_counter() - t0
        total = timed(
            lambda out: shards.write_dataset(out, {"train": clients}, schema, metadata={"fingerprint": "bench"}), tmp
        )
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)
    print(f"  where the writer's {total:.2f} s go (instrumented run; uninstrumented median {total_s:.2f} s):")
    for label, s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"    {label:<56}{s:7.2f} s {100 * s / total:5.1f} %")
    print(
        f"    {'  of which client_id column build (dictionary -> cast)':<56}{id_s:7.2f} s {100 * id_s / total:5.1f} %"
    )
    rest = total - sum(spent.values())
    print(f"    {'other (add(): label min/max, bookkeeping)':<56}{rest:7.2f} s {100 * rest / total:5.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 / 400 clients (under a minute)")
    parser.add_argument(
        "--dir",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the files are written (default: tmpfs /dev/shm if present)",
    )
    args = parser.parse_args()
    emnist, digits, repeats = (300, 400, 3) if args.quick else (3000, 3594, REPEATS)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stage-throughput-", dir=args.dir))
    print(f"writing under {tmp.parent}")
    try:
        ratios = [
            run("EMNIST-like", "emnist", emnist, tmp, repeats),
            run("digits-like (100x digits)", "digits", digits, tmp, repeats),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nours / raw: EMNIST-like {ratios[0]:.2f}x, digits-like {ratios[1]:.2f}x (target >= 0.8x): "
        f"{'PASS' if min(ratios) >= 0.8 else 'FAIL'}  ({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
