"""Benchmark: seconds per round of the simulations_with_accelerators tutorial's VGG-like CNNs with 16
clients per round, sweeping TFF's ``max_concurrent_computation_calls`` (how many calls of one computation,
e.g. client trainings, TFF's C++ runtime runs at once; 0 = TFF's default, no limit).

    make bench-accelerators     # runs in the TFF environment; prints the device and the load average

The tutorial's knob was ``clients_per_thread`` of TFF's old Python runtime; TFF 0.87 has only the C++
runtime. Workload: digits-like 8x8x1 images, 10 classes, 20 clients of 50-90 examples, 16 per round, batch
16, 1 local epoch, client SGD 0.01, server SGD 1.0 (the tutorial's), through the trainer's own round
runner on the tff engine, and once on the hybrid engine (each client's training as one tf.function in
the trainer process: the path that uses a GPU; --no-hybrid skips it). Each setting runs ROUNDS rounds from the same seeded start in this process; the
first round (tracing) is reported apart from the median of the rest. The machine is shared: compare only
numbers printed together, and read the load average printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import engines  # bench/engines.py: the same synthetic data, runs and round timing (bench/ is on sys.path)
import numpy as np

ROUNDS = 3
CLIENTS, CLIENTS_PER_ROUND = 20, 16
# The tutorial's client work on engines.py's synthetic 8x8 digits.
RUN = {"num_clients": CLIENTS, "clients_per_round": CLIENTS_PER_ROUND, "local_epochs": 1, "batch_size": 16,
       "client_learning_rate": 0.01, "server_learning_rate": 1.0, "rounds": ROUNDS, "rounds_per_chunk": ROUNDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg_small")
    parser.add_argument("--calls", default="0,1,2,4", help="max_concurrent_computation_calls values (tff engine)")
    parser.add_argument(
        "--hybrid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the hybrid engine (client work in the trainer process, on a GPU if seen)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import tensorflow as tf
    import tensorflow_federated as tff

    from trainer import devices, lifecycle, program

    lifecycle.install()  # also gives workers SIGINT back: switching contexts ends the previous one with it
    gpus = devices.gpu_names()
    device = f"{os.cpu_count()} CPU cores, {'GPUs: ' + ', '.join(gpus) if gpus else 'no GPU'}"
    load_before = os.getloadavg()
    settings = [("tff", int(v)) for v in args.calls.split(",")] + ([("hybrid", 0)] if args.hybrid else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        staged = engines.stage(root, CLIENTS, sizes=(50, 91), test_size=200)
        for model in args.models.split(","):
            for engine, calls in settings:
                # Every setting gets a fresh context (0: TFF's default, as at import).
                tff.backends.native.set_sync_local_cpp_execution_context(max_concurrent_computation_calls=calls or -1)
                exp = program.load_experiment(engines.make_run(root, staged, f"{model}_{engine}_{calls}", **RUN, model=model))
                params = int(sum(np.prod(v.shape) for v in exp.eval_model.trainable_weights))
                times = engines.round_times(exp, engine, ROUNDS)
                results.append(
                    {
                        "model": model,
                        "parameters": params,
                        "engine": engine,
                        "max_concurrent_computation_calls": calls,
                        "first_round_s": times[0],
                        "s_per_round": statistics.median(times[1:]),
                        "clients_per_round": CLIENTS_PER_ROUND,
                    }
                )
                print(f"  done {model} {engine} calls={calls}: {results[-1]['s_per_round']:.2f} s/round", flush=True)
    load_after = os.getloadavg()
    print(
        f"\nSeconds per round, {CLIENTS_PER_ROUND} clients per round, 8x8x1 inputs (median of rounds 2-{ROUNDS}; "
        f"round 1 in brackets). Device: {device}; the tff engine computes in TFF's CPU-only worker_binary, the "
        f"hybrid in the trainer process. TensorFlow {tf.__version__}, TFF {tff.__version__}. Load average (1 min) "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after."
    )
    print(f"{'model':>10} {'parameters':>11} {'engine':>7} {'max_concurrent_computation_calls':>33} {'s/round':>16}")
    for r in results:
        calls = r["max_concurrent_computation_calls"] or "0 (no limit)"
        if r["engine"] == "hybrid":
            calls = "- (client work in-process)"
        print(
            f"{r['model']:>10} {r['parameters']:>11,} {r['engine']:>7} {calls!s:>33} "
            f"{r['s_per_round']:>7.2f} ({r['first_round_s']:6.2f})"
        )
    if args.json:
        record = {"device": device, "load_average": [load_before, load_after], "results": results}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
