"""Trainer entry point, run in the TFF environment by the Airflow-side launcher.

    python -m trainer train --run-dir data/runs/<run> --until-round 20 [--engine hybrid]
    python -m trainer export --run-dir data/runs/<run>
    python -m trainer pretrain --run-dir data/runs/<run>    # central pretraining of a warm start (text)

Exchanges files only: config.json, staged.json and checkpoints in; metrics.jsonl, checkpoints,
model/ and final.json out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="bring a run to a round")
    train.add_argument("--run-dir", type=Path, required=True)
    train.add_argument("--until-round", type=int, required=True)
    train.add_argument("--engine", choices=("tff", "hybrid", "jax"), help="override the config's engine for this chunk")
    export = sub.add_parser("export", help="evaluate and save the final model")
    export.add_argument("--run-dir", type=Path, required=True)
    pretrain = sub.add_parser("pretrain", help="train the warm-start model centrally (trainer/pretrain.py)")
    pretrain.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s [fedflow] %(message)s"
    )
    from trainer import lifecycle

    lifecycle.install()
    from trainer import program  # imports TensorFlow and TFF (11-18 s)

    if args.command == "pretrain":
        from trainer import devices
        from trainer import pretrain as pretraining

        devices.configure_devices()
        pretraining.pretrain(args.run_dir)
    elif args.command == "train":
        program.train_until_round(args.run_dir, args.until_round, args.engine)
    else:
        program.export_model(program.load_experiment(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
