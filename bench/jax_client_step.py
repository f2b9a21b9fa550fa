"""Benchmark: K clients' local training in JAX, one jitted call per client against one call for all K.

    python bench/jax_client_step.py [--clients 10,50,200] [--model mlp|logreg] [--json PATH]

Needs only numpy and jax (no TensorFlow), so it runs as well on a GPU machine that has nothing else;
it measures on whatever ``jax.default_backend()`` is (``JAX_PLATFORMS=cpu`` forces the CPU). The
workload is the digits recipe: synthetic digits-like data (64 features in [0, 1], 10 classes, label
skew per client), client sizes ~30-150 examples, 2 local epochs, batch 20, SGD 0.1.

For each K both ways run once to compile (warm-up), then ``--repeats`` times; the best time is kept.
Timings include padding and host-to-device copies of the data, and wait for the results. The ratio
(cohort / loop) is measured in the same run: compare only numbers printed together. The parity column
is max |delta_loop - delta_cohort| over all clients and weights; ex/client counts all epochs; useful is
the share of the cohort's steps that are not padding (every client runs as many steps as the longest).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402 - after the path insertion that makes the trainer importable without PYTHONPATH

from trainer import jax_client  # noqa: E402

FEATURES, CLASSES, EPOCHS, BATCH, LR = 64, 10, 2, 20, 0.1
MODELS = {"mlp": [FEATURES, 128, CLASSES], "logreg": [FEATURES, CLASSES]}


def make_clients(num_clients: int, seed: int = 0):
    """Per-client (x, y) with the epochs already laid out: concatenated permutations, as shuffle+repeat."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 1, (CLASSES, FEATURES)) ** 2  # sparse-ish strokes, like 8x8 digits / 16
    sizes = np.clip(np.round(rng.lognormal(np.log(70), 0.45, num_clients)), 30, 150).astype(int)
    clients = []
    for n in sizes:
        label_mix = rng.dirichlet(np.full(CLASSES, 0.5))
        y = rng.choice(CLASSES, n, p=label_mix)
        x = np.clip(prototypes[y] + rng.normal(0, 0.15, (n, FEATURES)), 0, 1).astype(np.float32)
        order = np.concatenate([rng.permutation(n) for _ in range(EPOCHS)])
        clients.append((x[order], y[order].astype(np.int32)))
    return clients


def loop_round(params, clients):
    outs = [jax_client.client_update(params, x, y, batch_size=BATCH, learning_rate=LR) for x, y in clients]
    return jax.block_until_ready(outs)


def cohort_round(params, clients):
    xs, ys, counts = jax_client.stack_clients([x for x, _ in clients], [y for _, y in clients])
    return jax.block_until_ready(jax_client.cohort_update(params, xs, ys, counts, batch_size=BATCH, learning_rate=LR))


def best_seconds(fn, repeats: int):
    result = fn()  # warm-up: compiles every shape this round needs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def peak_memory_bytes() -> int | None:
    """The device allocator's peak so far (cumulative over the process), where the backend reports one."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends raise or return None depending on the jax version
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def parity(loop_outs, cohort) -> float:
    worst = 0.0
    stacked = [np.asarray(d) for d in jax.tree_util.tree_leaves(cohort.delta)]
    for k, out in enumerate(loop_outs):
        for single, many in zip(jax.tree_util.tree_leaves(out.delta), stacked, strict=True):
            worst = max(worst, float(np.abs(np.asarray(single) - many[k]).max()))
        if int(out.num_examples) != int(cohort.num_examples[k]) or int(out.correct) != int(cohort.correct[k]):
            return float("inf")
    return worst


def measure(num_clients: int, model: str, repeats: int, save_deltas: str | None) -> dict:
    params = jax_client.init_dense(MODELS[model], seed=0)
    clients = make_clients(num_clients, seed=num_clients)
    loop_s, loop_outs = best_seconds(lambda: loop_round(params, clients), repeats)
    cohort_s, cohort = best_seconds(lambda: cohort_round(params, clients), repeats)
    if save_deltas:
        np.savez(
            save_deltas,
            **{f"cohort_{i}": np.asarray(d) for i, d in enumerate(jax.tree_util.tree_leaves(cohort.delta))},
            **{f"client0_{i}": np.asarray(d) for i, d in enumerate(jax.tree_util.tree_leaves(loop_outs[0].delta))},
        )
    examples = np.array([len(x) for x, _ in clients])
    steps = -(-examples // BATCH)
    return {
        "clients": num_clients,
        "examples_mean": float(examples.mean()),
        "examples_max": int(examples.max()),
        "steps_max": int(steps.max()),
        "useful_step_fraction": float(steps.sum() / (len(steps) * steps.max())),
        "loop_s": loop_s,
        "cohort_s": cohort_s,
        "loop_clients_per_s": num_clients / loop_s,
        "cohort_clients_per_s": num_clients / cohort_s,
        "speedup": loop_s / cohort_s,
        "parity_max_abs": parity(loop_outs, cohort),
        "peak_device_bytes": peak_memory_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50,200", help="comma-separated K values")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--precision",
        choices=["default", "highest"],
        default="default",
        help="float32 matmul precision; 'highest' turns off TF32 on recent NVIDIA GPUs",
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--save-deltas", help="npz with the first K's cohort deltas, to compare across devices")
    args = parser.parse_args()
    if args.precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")

    device = jax.devices()[0]
    header = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "layers": MODELS[args.model],
        "epochs": EPOCHS,
        "batch": BATCH,
        "lr": LR,
        "precision": args.precision,
        "repeats": args.repeats,
    }
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    print(
        f"{'K':>6} {'ex/client':>9} {'useful':>6} {'loop cl/s':>10} {'cohort cl/s':>12} {'speedup':>8} {'parity':>9} {'peak MB':>8}"
    )
    results = []
    for i, k in enumerate(int(v) for v in args.clients.split(",")):
        row = measure(k, args.model, args.repeats, args.save_deltas if i == 0 else None)
        results.append(row)
        peak = "-" if row["peak_device_bytes"] is None else f"{row['peak_device_bytes'] / 2**20:.0f}"
        print(
            f"{k:>6} {row['examples_mean']:>9.1f} {row['useful_step_fraction']:>6.2f} {row['loop_clients_per_s']:>10.1f} "
            f"{row['cohort_clients_per_s']:>12.1f} {row['speedup']:>7.2f}x {row['parity_max_abs']:>9.1e} {peak:>8}",
            flush=True,
        )
        if args.json:  # rewritten after every K, so a run cut short by a timeout keeps what it measured
            Path(args.json).write_text(json.dumps({**header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
