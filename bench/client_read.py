"""Benchmark: materialising one random client's examples (numpy x, y) from the staged Parquet shards
(``Manifest.read_client``) against TFF's h5 ClientData on the same data.

The data: an EMNIST-like TFF h5 file (``examples/<client_id>/{pixels,label}``; 3,383 writers like
``fed_emnist_digitsonly_train.h5``, 20..300 examples of 28x28 float32 each), staged through
``stage.stage_dataset`` (dataset 'h5', split 'by_client': every train client keeps all its examples).
The baseline is what TFF's ``HDF5ClientData.create_tf_dataset_for_client`` did, minus TensorFlow:
``f["examples"][cid][feature][()]`` per feature from an already-open ``h5py.File`` (TFF's own
``sorted(group.items())`` loop is printed for information). Reads are interleaved (ours, h5, h5,
ours, ...) over the same random clients; every array read is compared with the h5 file's.

Target: warm (manifest read and files open, page cache warm), ours <= 1.0x the h5 read (median).
Cold-ish numbers (a new Manifest object / h5py.File per read) are for information. Ratios are
measured in this run: the machine is shared and noisy, compare only numbers printed together.

    .venv/bin/python bench/client_read.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _datagen  # noqa: E402


def stats(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[int(0.9 * len(times))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 clients, 500 reads (under a minute)")
    args = parser.parse_args()
    num_clients, reads, cold_reads = (1000, 500, 50) if args.quick else (3383, 2000, 200)

    import h5py

    tmp = Path(tempfile.mkdtemp(prefix="bench-client-read-"))
    os.environ["FEDFLOW_DATA_DIR"] = str(tmp / "data")
    from tasks import shards, stage
    from tasks.config import ExperimentConfig

    try:
        start = time.perf_counter()
        h5_path = tmp / "emnist_like.h5"
        total = _datagen.write_h5(h5_path, _datagen.clients("emnist", num_clients))
        test_fraction = 0.05
        train_clients = round(num_clients / (1 + test_fraction))
        cfg = ExperimentConfig(
            dataset="h5",
            source_path=str(h5_path),
            num_clients=train_clients,
            clients_per_round=10,
            min_examples_per_client=10,
            split="by_client",
            test_fraction=test_fraction,
        )
        staged = stage.stage_dataset(cfg)
        manifest = staged.manifest
        ids = manifest.client_ids("train")
        shard_count = len(manifest.data["files"])
        print(
            f"\n{len(ids):,} train clients of {num_clients:,} ({total:,} examples of 28x28 float32, "
            f"h5 {h5_path.stat().st_size / 1e6:,.0f} MB, {shard_count} Parquet shards), staged in "
            f"{time.perf_counter() - start:.1f} s; {reads:,} random client reads, interleaved"
        )

        f = h5py.File(h5_path, "r")

        def h5_read(cid: str, h5file=f) -> tuple[np.ndarray, np.ndarray]:
            examples = h5file["examples"]
            return examples[cid]["pixels"][()], examples[cid]["label"][()]

        def tff_read(cid: str) -> tuple[np.ndarray, np.ndarray]:
            features = {name: ds[()] for name, ds in sorted(f["examples"][cid].items())}
            return features["pixels"], features["label"]

        def ours(cid: str) -> tuple[np.ndarray, np.ndarray]:
            c = manifest.read_client("train", cid)
            return c.x, c.y

        rng = random.Random(7)
        warm_order = [rng.choice(ids) for _ in range(reads)]
        for cid in warm_order[: min(200, reads)]:  # warm-up: h5 metadata cache, the shards' memory maps
            ours(cid), h5_read(cid), tff_read(cid)
        order = [rng.choice(ids) for _ in range(reads)]
        readers = {"ours": ours, "h5": h5_read, "tff": tff_read}
        times: dict[str, list[float]] = {k: [] for k in readers}
        checked = 0
        for k, cid in enumerate(order):
            got = {}
            names = list(readers) if k % 2 == 0 else list(reversed(readers))
            for name in names:
                t0 = time.perf_counter()
                got[name] = readers[name](cid)
                times[name].append(time.perf_counter() - t0)
            (x, y), (hx, hy) = got["ours"], got["h5"]
            if not (np.array_equal(x, hx) and np.array_equal(y, hy) and x.dtype == np.float32 and y.dtype == np.int64):
                raise AssertionError(f"client {cid}: Manifest.read_client differs from the h5 file")
            checked += 1

        # Cold-ish: a new Manifest (manifest already parsed / parsed per read) and a new h5py.File per read.
        data = manifest.data
        cold: dict[str, list[float]] = {"manifest_obj": [], "manifest_read": [], "h5_open": []}
        for cid in order[:cold_reads]:
            t0 = time.perf_counter()
            shards.Manifest(staged.path, data).read_client("train", cid)
            cold["manifest_obj"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            shards.Manifest.read(staged.path).read_client("train", cid)
            cold["manifest_read"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with h5py.File(h5_path, "r") as g:
                h5_read(cid, g)
            cold["h5_open"].append(time.perf_counter() - t0)
        f.close()

        base = stats(times["h5"])
        rows = [
            ("warm: Manifest.read_client (ours)", stats(times["ours"])),
            ('warm: h5py f["examples"][cid][feature][()]', base),
            ("warm: TFF's sorted(group.items()) loop", stats(times["tff"])),
            ("cold: new Manifest(root, parsed json) + read", stats(cold["manifest_obj"])),
            ("cold: Manifest.read (parse manifest.json) + read", stats(cold["manifest_read"])),
            ("cold: h5py.File open + read", stats(cold["h5_open"])),
        ]
        print(f"  {'':<50}{'median ms':>10}{'p90 ms':>9}{'vs h5':>8}")
        for name, (med, p90) in rows:
            print(f"  {name:<50}{med * 1e3:10.3f}{p90 * 1e3:9.3f}{med / base[0]:7.2f}x")
        ratio = stats(times["ours"])[0] / base[0]
        p90_ratio = stats(times["ours"])[1] / base[1]
        print(f"  arrays identical to the h5 file's for all {checked:,} timed reads")
        print(
            f"  warm read, ours / h5: median {ratio:.2f}x, p90 {p90_ratio:.2f}x (target <= 1.0x): "
            f"{'PASS' if ratio <= 1.0 else 'FAIL'}"
        )
        print(
            f"  (manifest.json {(staged.path / shards.MANIFEST).stat().st_size / 1e6:.1f} MB; "
            f"{time.perf_counter() - start:.0f} s in all)"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
