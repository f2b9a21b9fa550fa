"""Benchmark: peak memory of staging at 1x, 10x and 100x the digits data set's size.

A digits-like data set (scikit-learn's 8x8 digits resampled: 1,797 / 17,970 / 179,700 examples,
50 examples per client) is written as a TFF-layout h5 file (``dataset="h5"``) and as a Parquet table
with a client-id column and one column per pixel (``dataset="table"``), then staged with
``stage.stage_dataset(ExperimentConfig(..., split="within_client"))`` in a fresh child process each
time. The child reports its peak RSS (VmHWM, see ``peak_mb``), the peak of pyarrow's
memory pool, and the peak RSS reached by the end of each staging phase (the peak only grows, so the
phase that raised it is where memory is held). A child that only imports the same modules gives
the interpreter baseline.

Target: flat, (peak at 100x - baseline) <= 1.3 x (peak at 1x - baseline), per source.

    .venv/bin/python bench/stage_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DIGITS = 1797
PER_CLIENT = 50
PHASES = ("imports", "client_sizes", "clients written", "finish (manifest)", "Manifest.read")


def client_sizes(examples: int) -> list[int]:
    sizes = [PER_CLIENT] * (examples // PER_CLIENT)
    return sizes + ([examples % PER_CLIENT] if examples % PER_CLIENT else [])


def data(examples: int):
    import _datagen

    for i, n in enumerate(client_sizes(examples)):
        yield (_datagen.client_id(i), *_datagen.digits_client(i, n))


def peak_mb() -> float:
    """This process's peak RSS in MiB: VmHWM, the high-water mark of its own address space.

    Not ``ru_maxrss``: Linux carries the parent's RSS at fork/exec time into the child's
    ``ru_maxrss`` (and into ``RUSAGE_CHILDREN``), so a child of a big parent reports the parent's
    size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(source: str, path: str, num_clients: int) -> None:
    """Runs in a fresh process: stages ``path`` and prints one JSON line of measurements."""
    import h5py  # noqa: F401  (the baseline imports what staging imports)
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from tasks import shards, stage
    from tasks.config import ExperimentConfig
    from tasks.sources import h5, table

    phases = {"imports": peak_mb()}
    if source == "none":
        print(json.dumps({"peak_mb": peak_mb(), "phases": phases, "arrow_peak_mb": 0.0}))
        return

    def after(label, fn):
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            finally:
                phases.setdefault(label, peak_mb())

        return inner

    def before(label, fn):
        def inner(*args, **kwargs):
            phases.setdefault(label, peak_mb())
            return fn(*args, **kwargs)

        return inner

    for reader in (h5.H5Source, table.TableSource):
        reader.client_sizes = after("client_sizes", reader.client_sizes)
    shards.DatasetWriter.finish = after("finish (manifest)", before("clients written", shards.DatasetWriter.finish))
    shards.Manifest.read = classmethod(after("Manifest.read", shards.Manifest.read.__func__))
    options = {"feature_shape": "8,8"} if source == "table" else {}
    cfg = ExperimentConfig(
        dataset=source,
        source_path=path,
        num_clients=num_clients,
        clients_per_round=10,
        min_examples_per_client=10,
        split="within_client",
        **options,
    )
    start = time.perf_counter()
    staged = stage.stage_dataset(cfg)
    seconds = time.perf_counter() - start
    manifest_mb = (staged.path / shards.MANIFEST).stat().st_size / 1e6
    print(
        json.dumps(
            {
                "peak_mb": peak_mb(),
                "phases": phases,
                "seconds": seconds,
                "manifest_mb": manifest_mb,
                "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
                "clients": staged.manifest.data["splits"]["train"]["num_clients"],
            }
        )
    )


def run_child(tmp: Path, source: str, path: Path | str, num_clients: int) -> dict:
    env = {
        **os.environ,
        "FEDFLOW_DATA_DIR": str(tmp / f"data-{source}-{num_clients}"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", source, str(path), str(num_clients)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"staging child failed ({source}, {num_clients} clients):\n{out.stderr[-3000:]}")
    shutil.rmtree(tmp / f"data-{source}-{num_clients}", ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1x and 10x only (under a minute)")
    parser.add_argument("--child", nargs=3, metavar=("SOURCE", "PATH", "NUM_CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    import _datagen

    scales = (1, 10) if args.quick else (1, 10, 100)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stage-memory-"))
    try:
        base = min(run_child(tmp, "none", "-", 0)["peak_mb"] for _ in range(3))
        print(
            f"\nPeak RSS of staging digits-like data (50 examples per client), a fresh process each; "
            f"interpreter + imports baseline {base:.0f} MB"
        )
        print(
            f"  {'source':<7}{'size':>5}{'examples':>10}{'clients':>9}{'staged s':>9}{'peak MB':>9}"
            f"{'- base':>8}{'arrow MB':>9}{'manifest MB':>12}   peak by the end of: " + ", ".join(PHASES[1:])
        )
        verdicts = []
        for source in ("h5", "table"):
            above = {}
            for scale in scales:
                examples = DIGITS * scale
                n = len(client_sizes(examples))
                if source == "h5":
                    path = tmp / f"digits-{scale}x.h5"
                    _datagen.write_h5(path, data(examples))
                else:
                    path = tmp / f"digits-{scale}x.parquet"
                    _datagen.write_table(path, data(examples))
                r = run_child(tmp, source, path, n)
                path.unlink()
                above[scale] = r["peak_mb"] - base
                phases = " / ".join(f"{r['phases'].get(p, float('nan')):.0f}" for p in PHASES[1:])
                print(
                    f"  {source:<7}{scale:>4}x{examples:>10,}{n:>9,}{r['seconds']:9.1f}{r['peak_mb']:9.0f}"
                    f"{above[scale]:8.1f}{r['arrow_peak_mb']:9.1f}{r['manifest_mb']:12.2f}   {phases}"
                )
            top = max(scales)
            verdicts.append((source, top, above[top] / max(above[1], 1.0), above[top] - above[1]))
        for source, top, ratio, growth in verdicts:
            print(
                f"  {source}: (peak - baseline) at {top}x / at 1x = {ratio:.2f}x, +{growth:.0f} MB "
                f"(target <= 1.3x): {'PASS' if ratio <= 1.3 else 'FAIL'}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"({time.perf_counter() - start:.0f} s; numpy {np.__version__})")


if __name__ == "__main__":
    main()
