"""Stage step: source data set -> client-partitioned Parquet shards + manifest.

The output directory is content-addressed, ``<data>/staged/<dataset>/<fingerprint>/``, where the
fingerprint covers the source, every partition setting and :data:`STAGER_VERSION`. Staging the same
thing again is a no-op. A stage is written to a temporary sibling and renamed into place in one step,
so a crash leaves no half data set and concurrent stagers of the same data cannot corrupt each other
(the loser discards its copy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from tasks import paths, shards
from tasks.config import ExperimentConfig

STAGER_VERSION = "1"
log = logging.getLogger(__name__)


class Error(Exception):
    """Base class for staging errors."""


class PartitionError(Error, ValueError):
    """The requested partition cannot be drawn from the data (too many clients, too few examples)."""


@dataclasses.dataclass(frozen=True)
class StagedDataset:
    path: Path
    manifest: shards.Manifest
    reused: bool

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint


def staging_settings(cfg: ExperimentConfig) -> dict:
    """The config fields that determine the staged data (and nothing else)."""
    return {
        "dataset": cfg.dataset,
        "num_clients": cfg.num_clients,
        "partition": cfg.partition,
        "dirichlet_alpha": cfg.dirichlet_alpha if cfg.partition == "dirichlet" else None,
        "min_examples_per_client": cfg.min_examples_per_client,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "stager_version": STAGER_VERSION,
    }


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def stage_dataset(cfg: ExperimentConfig) -> StagedDataset:
    """Stages ``cfg``'s data set (or reuses an identical earlier stage) and returns it."""
    settings = staging_settings(cfg)
    fp = fingerprint(settings)
    final = paths.staged_root() / cfg.dataset / fp
    if (final / shards.MANIFEST).exists():
        log.info("Reusing staged data set %s", final)
        return StagedDataset(final, shards.Manifest.read(final), reused=True)

    tmp = final.parent / f".tmp-{fp}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _write_stage(tmp, cfg, settings, fp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / shards.MANIFEST).exists():
                raise
            log.info("Another stager finished %s first; using its copy", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Staged %s into %s", cfg.dataset, final)
    return StagedDataset(final, shards.Manifest.read(final), reused=False)


def _write_stage(out: Path, cfg: ExperimentConfig, settings: dict, fp: str) -> None:
    x, y, source = load_source(cfg.dataset)
    rng = np.random.default_rng([cfg.seed, 0x57A6E])
    train_idx, test_idx = stratified_split(y, cfg.test_fraction, rng)
    if cfg.partition == "dirichlet":
        parts = dirichlet_partition(y[train_idx], cfg.num_clients, cfg.dirichlet_alpha, cfg.min_examples_per_client, rng)
    else:
        parts = iid_partition(len(train_idx), cfg.num_clients, cfg.min_examples_per_client, rng)
    width = len(str(cfg.num_clients - 1))
    train_clients = [
        shards.ClientExamples(f"client_{i:0{width}d}", x[train_idx[p]], y[train_idx[p]]) for i, p in enumerate(parts)
    ]
    test_clients = [shards.ClientExamples("test", x[test_idx], y[test_idx])]
    shards.write_dataset(
        out,
        {"train": train_clients, "test": test_clients},
        shards.Feature("pixels", "float32", tuple(x.shape[1:])),
        num_classes=int(y.max()) + 1,
        metadata={"dataset": cfg.dataset, "fingerprint": fp, "settings": settings, "source": source},
    )


def load_source(dataset: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Returns (x float32 in [0, 1] with a channel axis, y int64, a description of the source)."""
    if dataset != "digits":
        raise Error(f"dataset must be 'digits'. Got {dataset!r}.")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    return x, y, {"name": "sklearn.datasets.load_digits", "num_examples": int(len(y)), "image_shape": [8, 8]}


def stratified_split(y: np.ndarray, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (per-class) train/test split of example indices."""
    train, test = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator, *, attempts: int = 200
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided among clients in Dirichlet(alpha) proportions.

    Redraws (seeded) until every client has ``min_size`` examples; the standard construction of
    Hsu et al. 2019, "Measuring the effects of non-identical data distribution".
    """
    _check_capacity(len(labels), num_clients, min_size)
    for _ in range(attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == label))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in merged) >= min_size:
            return merged
    raise PartitionError(
        f"Could not give each of {num_clients} clients >= {min_size} examples with dirichlet_alpha={alpha} "
        f"in {attempts} seeded draws ({len(labels)} training examples). "
        "Fix: raise dirichlet_alpha, lower num_clients or lower min_examples_per_client."
    )


def iid_partition(n: int, num_clients: int, min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform split of ``n`` shuffled examples into ``num_clients`` near-equal parts."""
    _check_capacity(n, num_clients, min_size)
    return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def _check_capacity(n: int, num_clients: int, min_size: int) -> None:
    if num_clients * min_size > n:
        raise PartitionError(
            f"num_clients x min_examples_per_client = {num_clients} x {min_size} = {num_clients * min_size} "
            f"exceeds the {n} training examples. Got num_clients={num_clients}. "
            "Fix: lower num_clients or min_examples_per_client, or lower test_fraction."
        )
