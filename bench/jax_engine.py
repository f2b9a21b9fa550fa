"""Benchmark: seconds per round of the ``jax`` engine against the ``tff`` and ``hybrid`` engines, on the dense
models the jax engine trains, through the trainer's own round runner (bench/engines.py's workload: 300
digits-like clients of 20-80 examples, 2 local epochs, batch 20; the same seeded start for every engine).

    make bench-jax          # runs in the TFF environment; prints the devices TensorFlow and JAX train on

The first round (tracing / XLA compilation) is reported apart from the median of the others. The jax engine
sends every client's update through TFF's aggregation process, where the hybrid computes TFF's plain mean in
its graph: at this size that call is a visible share of a round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

ENGINES = ("tff", "hybrid", "jax")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="softmax,mlp")
    parser.add_argument("--clients-per-round", default="10,50")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from bench import engines as bench
    from trainer import jax_engine, lifecycle, program

    lifecycle.install()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        staged = bench.stage(root)
        for model in args.models.split(","):
            for k in (int(v) for v in args.clients_per_round.split(",")):
                row = {"model": model, "clients_per_round": k}
                for engine in ENGINES:
                    run = bench.make_run(root, staged, f"{model}_{k}_{engine}", model=model, clients_per_round=k)
                    times = bench.round_times(program.load_experiment(run), engine, bench.ROUNDS)
                    row[f"{engine}_first_s"], row[f"{engine}_s"] = times[0], statistics.median(times[1:])
                results.append(row)
                print(f"  done {model} K={k}", flush=True)
    print(
        f"\nSeconds per round (median of rounds 2-{bench.ROUNDS}; first round in brackets); "
        f"jax trains on {jax_engine.device_name()}"
    )
    print(f"{'model':>8} {'K':>4} " + " ".join(f"{e + ' s/round':>18}" for e in ENGINES) + f" {'tff/jax':>8}")
    for r in results:
        cells = " ".join(f"{r[f'{e}_s']:>9.4f} ({r[f'{e}_first_s']:>6.2f})" for e in ENGINES)
        print(f"{r['model']:>8} {r['clients_per_round']:>4} {cells} {r['tff_s'] / r['jax_s']:>7.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
