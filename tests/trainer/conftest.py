"""Trainer tests run inside the TFF environment (`.venv-tff/bin/python -m pytest tests/trainer`),
sharing one TensorFlow + TFF import and one worker_binary across the whole session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks import atomic, shards
from tasks.checkpoints import CheckpointStore
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from trainer import lifecycle

NUM_CLASSES = 4

# A test session started with `&` (CI run in the background) inherits SIGINT ignored, and so would the
# worker_binaries it starts; replacing TFF's context (secure aggregator, concurrency tests) would then wait forever.
lifecycle.restore_sigint()


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ARG001 - pytest hook signature
    """TFF's worker_binary would outlive pytest and hold its output pipe open: end it."""
    from trainer import lifecycle

    lifecycle.reap_children()


def synthetic_client(client_id: str, rng: np.random.Generator, n: int) -> shards.Client:
    """Learnable 8x8 images: class k lights up quadrant k, plus noise."""
    y = rng.integers(0, NUM_CLASSES, n)
    x = rng.uniform(0, 0.3, (n, 8, 8, 1)).astype(np.float32)
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4, 0] += 0.7
    return shards.Client(client_id, {"pixels": np.clip(x, 0, 1), "label": y.astype(np.int64)})


@pytest.fixture(scope="session")
def staged(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    out = tmp_path_factory.mktemp("staged")
    shards.write_dataset(
        out,
        {"train": [synthetic_client(f"c{i}", rng, 24) for i in range(6)], "test": [synthetic_client("test", rng, 40)]},
        shards.Schema("image", (shards.Column("pixels", "float32", (8, 8, 1)), shards.Column("label", "int64")),
                      x="pixels", label="label", num_classes=NUM_CLASSES),
        metadata={"dataset": "synthetic", "fingerprint": "synthetic", "settings": {}, "source": {}},
    )
    return out


@pytest.fixture
def make_run(tmp_path, staged):
    """Creates a run directory (as resolve + stage leave it) for a config; returns its RunPaths."""

    def create(name: str = "run", **overrides) -> RunPaths:
        cfg = ExperimentConfig(**{"num_clients": 6, "clients_per_round": 3, "min_examples_per_client": 1,
                                  "model": "mlp", "local_epochs": 1, "batch_size": 8, "rounds": 5,
                                  "rounds_per_chunk": 5, "eval_every": 100, "keep_checkpoints": 100, **overrides})
        run = RunPaths(tmp_path / name)
        run.root.mkdir()
        atomic.write_json(run.config, cfg.to_dict())
        atomic.write_json(run.staged, {"path": str(staged), "fingerprint": "synthetic"})
        return run

    return create


def checkpoint(run: RunPaths, round_num: int | None = None):
    store = CheckpointStore(run.checkpoints, keep=100)
    return store.load_latest() if round_num is None else store.load(round_num)
