"""Benchmark: the Parquet layout of staged shards, chosen by measurement.

For EMNIST-like data (3,000 clients x 20..300 examples of 28x28 float32, ~80 % zeros, int64 labels)
and digits-like data (3,594 clients x 50 examples of 8x8, i.e. 100x scikit-learn's digits), every
combination of

- image column: ``fixed_size_binary`` of the raw bytes (what ``tasks/shards.py`` writes) vs
  ``list<float32>`` vs ``fixed_size_list<float32>``;
- row groups: one per client (what shards writes) vs 64 clients per row group vs ~128 MB row groups
  (whole clients; reading one client then reads its row group and slices);
- compression: none (what shards writes) vs snappy vs zstd;

measures the file size, the write time, the time to read one random client to numpy (x, y) with the
file already open and with an open per read (median of many reads, page cache warm; blocks of reads
per variant over 4 passes in shuffled order), and the time to read the whole split to numpy. Each
variant is one file holding every client, so "open per read" parses a footer of 3,000+ row groups;
tasks/shards.py starts a new shard every 256 clients / 64 MB, ~12x smaller footers. Ratios are
against fixed_size_binary / client / none measured in this run (the machine is shared and noisy:
compare only numbers printed together).

Target: the layout in tasks/shards.py is the fastest (within 10 %) on the read-one-client path
with the file open, which is what every training round does.

    .venv/bin/python bench/parquet_layout.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import random
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
import _datagen  # noqa: E402

ENCODINGS = ("fixed_size_binary", "list", "fixed_size_list")
ROW_GROUPS = ("client", "64 clients", "128 MB")
COMPRESSIONS = ("none", "snappy", "zstd")
BASELINE = ("fixed_size_binary", "client", "none")


class Data:
    def __init__(self, kind: str, num_clients: int, per_client: int) -> None:
        items = list(_datagen.clients(kind, num_clients, per_client=per_client))
        self.ids = [cid for cid, _, _ in items]
        self.sizes = np.array([len(y) for _, _, y in items])
        self.starts = np.r_[0, np.cumsum(self.sizes)[:-1]]
        self.x = np.concatenate([x for _, x, _ in items])
        self.y = np.concatenate([y for _, _, y in items])
        self.shape = self.x.shape[1:]
        self.per_example = int(np.prod(self.shape))
        self.client_ids = pa.DictionaryArray.from_arrays(
            pa.array(np.repeat(np.arange(len(items), dtype=np.int32), self.sizes)), pa.array(self.ids)
        ).cast(pa.string())

    @property
    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes

    def table(self, encoding: str) -> pa.Table:
        flat = self.x.reshape(-1)
        n = len(self.y)
        if encoding == "fixed_size_binary":
            xs = pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.per_example * 4), n, [None, pa.py_buffer(flat)])
        elif encoding == "fixed_size_list":
            xs = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.per_example)
        else:
            offsets = pa.array(np.arange(0, (n + 1) * self.per_example, self.per_example, dtype=np.int32))
            xs = pa.ListArray.from_arrays(offsets, pa.array(flat))
        return pa.table({"client_id": self.client_ids, "x": xs, "label": pa.array(self.y)})

    def row_groups(self, layout: str) -> list[tuple[int, int]]:
        """[(first client, end client)] per row group (whole clients)."""
        if layout == "client":
            return [(i, i + 1) for i in range(len(self.ids))]
        if layout == "64 clients":
            return [(i, min(i + 64, len(self.ids))) for i in range(0, len(self.ids), 64)]
        groups, first, size = [], 0, 0
        per_client = self.sizes * (self.per_example * 4 + 8)
        for i, b in enumerate(per_client):
            if size and size + b > 128 << 20:
                groups.append((first, i))
                first, size = i, 0
            size += b
        groups.append((first, len(self.ids)))
        return groups


def decode_x(column: pa.ChunkedArray, encoding: str, shape: tuple[int, ...]) -> np.ndarray:
    parts = []
    for c in column.chunks:
        if encoding == "fixed_size_binary":
            nbytes = c.type.byte_width
            raw = np.frombuffer(c.buffers()[1], np.uint8, count=len(c) * nbytes, offset=c.offset * nbytes)
            parts.append(raw.view("<f4").reshape(len(c), *shape))
        else:
            parts.append(c.flatten().to_numpy().reshape(len(c), *shape))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def write(path: Path, table: pa.Table, data: Data, layout: str, compression: str) -> float:
    start = time.perf_counter()
    with pq.ParquetWriter(
        path, table.schema, compression=compression, use_dictionary=["client_id"], write_statistics=["client_id"]
    ) as writer:
        for first, end in data.row_groups(layout):
            rows = int(data.sizes[first:end].sum())
            writer.write_table(table.slice(int(data.starts[first]), rows), row_group_size=rows)
    return time.perf_counter() - start


class Variant:
    def __init__(self, key: tuple[str, str, str], path: Path, data: Data) -> None:
        self.key, self.path, self.data = key, path, data
        self.encoding, self.layout, _ = key
        self.index = {}  # client -> (row group, row offset in it, rows): what a manifest records
        for rg, (first, end) in enumerate(data.row_groups(self.layout)):
            for i in range(first, end):
                self.index[i] = (rg, int(data.starts[i] - data.starts[first]), int(data.sizes[i]))
        self.file = pq.ParquetFile(path, memory_map=True)
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.size = path.stat().st_size
        self.write_s = self.all_s = 0.0

    def read_client(self, i: int, opened: bool, check: bool = False) -> None:
        """Reads client ``i`` (x, y) to numpy, as the trainer does; records the seconds."""
        data = self.data
        start = time.perf_counter()
        f = self.file if opened else pq.ParquetFile(self.path, memory_map=True)
        rg, off, n = self.index[i]
        table = f.read_row_group(rg, columns=["x", "label"])
        if self.layout != "client":
            table = table.slice(off, n)
        x = decode_x(table.column("x"), self.encoding, data.shape)
        y = table.column("label").to_numpy()
        self.times[opened].append(time.perf_counter() - start)
        if check:
            s = int(data.starts[i])
            assert np.array_equal(x, data.x[s : s + n]) and np.array_equal(y, data.y[s : s + n]), (self.path, i)

    def stat(self, opened: bool) -> tuple[float, float]:
        times = sorted(self.times[opened])
        return statistics.median(times), times[int(0.9 * len(times))]

    def read_all(self) -> float:
        start = time.perf_counter()
        table = pq.read_table(self.path, columns=["x", "label"], memory_map=True)
        x = decode_x(table.column("x"), self.encoding, self.data.shape)
        y = table.column("label").to_numpy()
        elapsed = time.perf_counter() - start
        assert x.shape == self.data.x.shape and np.array_equal(y, self.data.y)
        return elapsed


def interleaved_reads(variants: list[Variant], reads: int, budget_s: float, opened: bool, passes: int = 4) -> None:
    """Reads random clients in blocks, one variant at a time (a block's reads follow reads of the same
    layout, as in a training round), over ``passes`` passes in a shuffled variant order (the
    machine's noise spreads over all variants); a variant stops after ``reads`` reads or once it has
    spent ``budget_s`` (at least 2 reads per pass)."""
    rng = random.Random(1)
    order = [rng.randrange(len(variants[0].data.ids)) for _ in range(reads)]
    for v in variants:  # warm-up: first touches of the memory maps, the allocator; checks the values
        for i in order[:3]:
            v.read_client(i, opened, check=True)
        v.times[opened].clear()
    per_pass = -(-reads // passes)
    shuffled = list(variants)
    for p in range(passes):
        rng.shuffle(shuffled)
        for v in shuffled:
            spent = 0.0
            for k, i in enumerate(order[p * per_pass : (p + 1) * per_pass]):
                if k >= 2 and spent >= budget_s / passes:
                    break
                before = len(v.times[opened])
                v.read_client(i, opened)
                spent += v.times[opened][before]


def run(name: str, data: Data, reads: int, budget_s: float, tmp: Path) -> None:
    print(
        f"\n{name}: {len(data.ids):,} clients, {len(data.y):,} examples of {data.shape} float32, "
        f"{data.nbytes / 1e6:,.0f} MB raw; one-client reads: median (p90), up to {reads} random clients each"
    )
    variants = []
    for encoding in ENCODINGS:
        table = data.table(encoding)
        for layout, compression in itertools.product(ROW_GROUPS, COMPRESSIONS):
            key = (encoding, layout, compression)
            path = tmp / f"{encoding}-{layout.replace(' ', '')}-{compression}.parquet"
            write_s = write(path, table, data, layout, compression)
            variants.append(Variant(key, path, data))
            variants[-1].write_s = write_s
        del table
    try:
        interleaved_reads(variants, reads, budget_s, opened=True)
        interleaved_reads(variants, max(20, reads // 4), budget_s / 2, opened=False)
        for v in variants:
            v.read_all()  # warm-up
            v.all_s = v.read_all()
    finally:
        for v in variants:
            v.path.unlink()
    rows = {v.key: v for v in variants}
    base = rows[BASELINE]
    print(
        f"  {'image column':<18}{'row groups':<12}{'compr.':<8}{'size MB':>8}{'write s':>9}"
        f"{'1 client, open, ms':>20}{'open per read, ms':>20}{'all s':>7}{'1 client vs ours':>18}"
    )
    for v in variants:
        warm, cold = v.stat(True), v.stat(False)
        mark = "  <- tasks/shards.py" if v.key == BASELINE else ""
        print(
            f"  {v.key[0]:<18}{v.key[1]:<12}{v.key[2]:<8}{v.size / 1e6:8.0f}{v.write_s:9.2f}"
            f"{warm[0] * 1e3:10.3f} ({warm[1] * 1e3:7.3f}){cold[0] * 1e3:10.3f} ({cold[1] * 1e3:7.2f})"
            f"{v.all_s:7.2f}{warm[0] / base.stat(True)[0]:17.2f}x{mark}"
        )
    best = min(variants, key=lambda v: v.stat(True)[0])
    ratio = base.stat(True)[0] / best.stat(True)[0]
    print(
        f"  fastest one-client read (file open): {' / '.join(best.key)} {best.stat(True)[0] * 1e3:.3f} ms; "
        f"tasks/shards.py's layout {base.stat(True)[0] * 1e3:.3f} ms = {ratio:.2f}x the fastest "
        f"(target <= 1.10x): {'PASS' if ratio <= 1.10 else 'FAIL'}"
    )
    for encoding in ENCODINGS[1:]:
        v = rows[(encoding, "client", "none")]
        print(
            f"    {encoding:<18} (client, none) vs ours: one client {v.stat(True)[0] / base.stat(True)[0]:5.2f}x, "
            f"whole split {v.all_s / base.all_s:5.2f}x, write {v.write_s / base.write_s:5.2f}x"
        )
    for compression in COMPRESSIONS[1:]:
        v = rows[("fixed_size_binary", "client", compression)]
        print(
            f"    fixed_size_binary (client, {compression:<6}) vs ours: size {v.size / base.size:4.2f}x, "
            f"one client {v.stat(True)[0] / base.stat(True)[0]:5.2f}x, whole split {v.all_s / base.all_s:5.2f}x, "
            f"write {v.write_s / base.write_s:5.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data sets (under a minute)")
    args = parser.parse_args()
    emnist_clients, digits_clients, reads, budget_s = (200, 300, 40, 0.2) if args.quick else (3000, 3594, 400, 1.0)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-layout-"))
    try:
        run("EMNIST-like", Data("emnist", emnist_clients, 0), reads, budget_s, tmp)
        run("digits-like (100x digits)", Data("digits", digits_clients, 50), reads, budget_s, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n({time.perf_counter() - start:.0f} s; pyarrow {pa.__version__})")


if __name__ == "__main__":
    main()
