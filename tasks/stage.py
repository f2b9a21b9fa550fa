"""Stage step: source data set -> client-partitioned Parquet shards + manifest.

The output directory is content-addressed, ``<data>/staged/<dataset>/<fingerprint>/``, where the
fingerprint covers the source's identity (file checksums, package versions), every partition and
split setting and :data:`STAGER_VERSION`. Staging the same thing again is a no-op; a changed source
file is a new fingerprint. A stage is written to a temporary sibling and renamed into place in one
step, so a crash leaves no half data set and concurrent stagers of the same data cannot corrupt each
other (the loser discards its copy). Clients are streamed one at a time into the shards: memory stays
flat in the data set's size (``bench/stage_memory.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tasks import paths, shards
from tasks.config import PATH_DATASETS, ExperimentConfig
from tasks.shards import Client
from tasks.sources import digits
from tasks.sources.base import Source, SourceError

STAGER_VERSION = "2"
log = logging.getLogger(__name__)

__all__ = ["PartitionError", "SourceError", "StagedDataset", "stage_dataset"]


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


def open_source(cfg: ExperimentConfig) -> Source | None:
    """The reader of ``cfg``'s data set (None for digits, which is partitioned, not read by client)."""
    shape, classes = cfg.parsed_feature_shape, cfg.num_classes or None
    test = cfg.source_test_path if cfg.effective_split == "source" else None
    if cfg.dataset == "digits":
        return None
    if cfg.dataset == "h5":
        from tasks.sources.h5 import H5Source

        return H5Source(cfg.source_path, test, x_column=cfg.x_column, label_column=cfg.label_column,
                        feature_shape=shape, num_classes=classes)
    if cfg.dataset == "tff_sqlite":
        from tasks.sources.tff_sqlite import TffSqliteSource

        return TffSqliteSource(cfg.source_path, train_split=cfg.source_split,
                               test_split="" if cfg.effective_split == "source" else None, x_column=cfg.x_column,
                               label_column=cfg.label_column, feature_shape=shape, num_classes=classes)
    if cfg.dataset == "leaf":
        from tasks.sources.leaf import LeafSource

        return LeafSource(cfg.source_path, test, feature_shape=shape, num_classes=classes)
    if cfg.dataset == "table":
        from tasks.sources.table import TableSource

        return TableSource(cfg.source_path, test, client_column=cfg.client_column,
                           feature_columns=cfg.parsed_feature_columns, label_column=cfg.label_column or "label",
                           feature_shape=shape, num_classes=classes)
    if cfg.dataset == "shakespeare":
        from tasks.sources.shakespeare import ShakespeareSource

        return ShakespeareSource(plays=cfg.parsed_plays or None)
    if cfg.dataset == "movielens":
        from tasks.sources.movielens import MovieLensSource

        return MovieLensSource()
    raise SourceError(f"dataset must be one of the known data sets. Got {cfg.dataset!r}.")


def staging_settings(cfg: ExperimentConfig, source: Source | None) -> dict[str, Any]:
    """Everything that determines the staged data (and nothing else): the fingerprint's input."""
    settings: dict[str, Any] = {
        "dataset": cfg.dataset,
        "num_clients": cfg.num_clients,
        "min_examples_per_client": cfg.min_examples_per_client,
        "split": cfg.effective_split,
        "test_fraction": cfg.test_fraction if cfg.effective_split != "source" else None,
        "seed": cfg.seed,
        "stager_version": STAGER_VERSION,
    }
    if source is None:
        settings["partition"] = cfg.partition
        settings["partition_parameter"] = {
            "dirichlet": cfg.dirichlet_alpha, "pathological": cfg.classes_per_client,
            "shards": cfg.shards_per_client, "iid": None,
        }[cfg.partition]
    else:
        settings["source"] = source.identity()
    return settings


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def stage_dataset(cfg: ExperimentConfig) -> StagedDataset:
    """Stages ``cfg``'s data set (or reuses an identical earlier stage) and returns it."""
    source = open_source(cfg)
    settings = staging_settings(cfg, source)
    fp = fingerprint(settings)
    final = paths.staged_root() / cfg.dataset / fp
    if (final / shards.MANIFEST).exists():
        log.info("Reusing staged data set %s", final)
        return StagedDataset(final, shards.Manifest.read(final), reused=True)

    tmp = final.parent / f".tmp-{fp}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        metadata = {"dataset": cfg.dataset, "fingerprint": fp, "settings": settings}
        if source is None:
            _write_partitioned(tmp, cfg, metadata)
        else:
            source.scratch_dir = tmp
            _write_federated(tmp, cfg, source, metadata)
        for leftover in tmp.iterdir():  # a reader's scratch files never become part of the data set
            if leftover.is_dir():
                shutil.rmtree(leftover)
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


# -- digits: one array, partitioned into simulated clients ---------------------------------------
def _write_partitioned(out: Path, cfg: ExperimentConfig, metadata: dict[str, Any]) -> None:
    x, y, description = digits.load()
    rng = np.random.default_rng([cfg.seed, 0x57A6E])
    split = cfg.effective_split
    n_test_clients = max(1, round(cfg.num_clients * cfg.test_fraction)) if split == "by_client" else 0
    if split == "central":
        train_idx, test_idx = stratified_split(y, cfg.test_fraction, rng)
    else:
        train_idx, test_idx = np.arange(len(y)), np.zeros(0, dtype=np.int64)
    total_clients = cfg.num_clients + n_test_clients
    min_size = _min_total(cfg)
    parts = partition(y[train_idx], cfg, total_clients, min_size, rng)
    width = len(str(total_clients - 1))
    ids = [f"client_{i:0{width}d}" for i in range(total_clients)]
    splits: dict[str, list[Client]] = {"train": [], "test": []}

    def client(cid: str, idx: np.ndarray) -> Client:
        return Client(cid, {"pixels": x[idx], "label": y[idx]})

    if split == "central":
        splits["train"] = [client(cid, train_idx[p]) for cid, p in zip(ids, parts, strict=True)]
        splits["test"] = [client("test", test_idx)]
    elif split == "by_client":
        test_clients = set(rng.choice(total_clients, size=n_test_clients, replace=False).tolist())
        for i, (cid, p) in enumerate(zip(ids, parts, strict=True)):
            splits["test" if i in test_clients else "train"].append(client(cid, train_idx[p]))
    else:  # within_client
        for cid, p in zip(ids, parts, strict=True):
            train_part, test_part = _split_examples(len(p), cfg.test_fraction, cfg.seed, cid)
            splits["train"].append(client(cid, train_idx[p][train_part]))
            splits["test"].append(client(cid, train_idx[p][test_part]))
    shards.write_dataset(out, splits, digits.SCHEMA, metadata={**metadata, "source": description})


def partition(labels: np.ndarray, cfg: ExperimentConfig, num_clients: int, min_size: int,
              rng: np.random.Generator) -> list[np.ndarray]:
    if cfg.partition == "dirichlet":
        return dirichlet_partition(labels, num_clients, cfg.dirichlet_alpha, min_size, rng)
    if cfg.partition == "pathological":
        return pathological_partition(labels, num_clients, cfg.classes_per_client, min_size, rng)
    if cfg.partition == "shards":
        return shard_partition(labels, num_clients, cfg.shards_per_client, min_size, rng)
    return iid_partition(len(labels), num_clients, min_size, rng)


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


def pathological_partition(labels: np.ndarray, num_clients: int, k: int, min_size: int,
                           rng: np.random.Generator) -> list[np.ndarray]:
    """Each client holds exactly ``k`` classes; each class is split evenly among its holders.

    Classes are dealt round-robin over a seeded class order, so every class has a holder whenever
    ``num_clients * k >= num_classes`` (the "pathological non-IID" split of McMahan et al. 2017).
    """
    classes = np.unique(labels)
    if k > len(classes):
        raise PartitionError(f"classes_per_client must be <= the {len(classes)} classes. Got {k}.")
    _check_capacity(len(labels), num_clients, min_size)
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        for j in range(k):
            holders[int(order[(client * k + j) % len(order)])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label, owners in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == label))
        if not owners:
            continue  # fewer client slots than classes: this class is left out of training
        for owner, piece in zip(owners, np.array_split(idx, len(owners)), strict=True):
            parts[owner].append(piece)
    merged = [np.sort(np.concatenate(p)) for p in parts]
    _check_sizes(merged, min_size, "pathological", f"classes_per_client={k}")
    return merged


def shard_partition(labels: np.ndarray, num_clients: int, shards_per_client: int, min_size: int,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Sort by label, cut into ``num_clients * shards_per_client`` equal shards, deal them at random."""
    total = num_clients * shards_per_client
    if total > len(labels):
        raise PartitionError(f"num_clients x shards_per_client = {total} shards exceed the {len(labels)} examples. "
                             "Fix: fewer clients or shards_per_client.")
    _check_capacity(len(labels), num_clients, min_size)
    idx = rng.permutation(len(labels))
    idx = idx[np.argsort(labels[idx], kind="stable")]
    pieces = np.array_split(idx, total)
    deal = rng.permutation(total).reshape(num_clients, shards_per_client)
    merged = [np.sort(np.concatenate([pieces[s] for s in row])) for row in deal]
    _check_sizes(merged, min_size, "shards", f"shards_per_client={shards_per_client}")
    return merged


def _check_sizes(parts: list[np.ndarray], min_size: int, name: str, setting: str) -> None:
    small = min(len(p) for p in parts)
    if small < min_size:
        raise PartitionError(f"partition {name!r} ({setting}) gives a client {small} examples, below the "
                             f"minimum {min_size}. Fix: lower num_clients or min_examples_per_client.")


def _check_capacity(n: int, num_clients: int, min_size: int) -> None:
    if num_clients * min_size > n:
        raise PartitionError(
            f"num_clients x min_examples_per_client = {num_clients} x {min_size} = {num_clients * min_size} "
            f"exceeds the {n} training examples. Got num_clients={num_clients}. "
            "Fix: lower num_clients or min_examples_per_client, or lower test_fraction."
        )


def _min_total(cfg: ExperimentConfig) -> int:
    """Examples a client needs so that its training part has ``min_examples_per_client``."""
    if cfg.effective_split != "within_client":
        return cfg.min_examples_per_client
    n = max(2, cfg.min_examples_per_client)  # at least one example on each side
    while n - _test_count(n, cfg.test_fraction) < cfg.min_examples_per_client:
        n += 1
    return n


def min_client_size(cfg: ExperimentConfig) -> int:
    """The examples a client of ``cfg``'s source needs to be drawn (its training part keeps
    ``min_examples_per_client`` after a within_client split)."""
    return _min_total(cfg)


def _test_count(n: int, test_fraction: float) -> int:
    return min(n - 1, max(1, round(n * test_fraction))) if n >= 2 else 0


def _split_examples(n: int, test_fraction: float, seed: int, client_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A client's own train/test split: seeded by (seed, client id), so it does not depend on which
    other clients were drawn; each part keeps the source order."""
    rng = np.random.default_rng([seed, zlib.crc32(client_id.encode()), 0x5B1])
    n_test = _test_count(n, test_fraction)
    order = rng.permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# -- data sets with their own clients -------------------------------------------------------------
def _draw_order(client_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{client_id}".encode()).hexdigest()


def _write_federated(out: Path, cfg: ExperimentConfig, source: Source, metadata: dict[str, Any]) -> None:
    schema = source.schema()
    split = cfg.effective_split
    min_size = _min_total(cfg)
    sizes = source.client_sizes("train")
    eligible = [cid for cid, n in sizes.items() if n >= min_size]
    n_test = max(1, round(cfg.num_clients * cfg.test_fraction)) if split == "by_client" else 0
    wanted = cfg.num_clients + n_test
    if len(eligible) < wanted:
        raise PartitionError(
            f"{cfg.dataset} source has {len(eligible)} clients with >= {min_size} examples (of {len(sizes)}"
            + (f"; {min_size} keep {cfg.min_examples_per_client} for training after the within_client test split"
               if min_size != cfg.min_examples_per_client else "") + "); "
            f"the config needs {wanted} ({cfg.num_clients} training"
            + (f" + {n_test} test clients)" if n_test else ")")
            + f". Fix: num_clients <= {max(0, len(eligible) - n_test)} or a lower min_examples_per_client."
        )
    drawn = sorted(eligible, key=lambda cid: _draw_order(cid, cfg.seed))[:wanted]
    test_ids = set(drawn[cfg.num_clients:])
    chosen = set(drawn)

    writer = shards.DatasetWriter(out, schema)
    try:
        for client in source.select("train", chosen):
            shards.check_lengths(client)
            if split == "by_client":
                writer.add("test" if client.client_id in test_ids else "train", client)
            elif split == "within_client":
                train, test = _split_examples(client.num_examples, cfg.test_fraction, cfg.seed, client.client_id)
                writer.add("train", _take(client, train))
                writer.add("test", _take(client, test))
            else:
                writer.add("train", client)
        if split == "source":
            test_sizes = source.client_sizes("test")
            shared = chosen & set(test_sizes)
            # TFF's files share writer ids between train and test (other examples of the same clients);
            # LEAF's user split has disjoint users: then every test user is a test client.
            test_clients = source.select("test", shared) if shared else source.clients("test")
            for client in test_clients:
                if client.num_examples:
                    writer.add("test", client)
    except BaseException:
        writer.abort()
        raise
    facts = source.source_facts() if hasattr(source, "source_facts") else {}
    if "rating_min" in facts:  # the scale validation checks ratings against
        facts["rating_range"] = [facts["rating_min"], facts["rating_max"]]
    writer.finish({**metadata, "source": {"name": source.name, **source.identity(), **facts},
                   "source_clients": len(sizes), "eligible_clients": len(eligible)})


def _take(client: Client, index: np.ndarray) -> Client:
    return Client(client.client_id, {name: _index(values, index) for name, values in client.columns.items()})


def _index(values: Any, index: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[index]
    return [values[i] for i in index]


def asset_uri(cfg: ExperimentConfig) -> str:
    """The Airflow asset that announces new staged data of this source: one per named data set, one
    per source file for path data sets (so a DAG can be scheduled on "new EMNIST data")."""
    if cfg.dataset not in PATH_DATASETS:
        return f"fedflow://staged/{cfg.dataset}"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(cfg.source_path).name)[:80] or "source"
    digest = hashlib.sha256(str(Path(cfg.source_path).expanduser().resolve()).encode()).hexdigest()[:8]
    return f"fedflow://staged/{cfg.dataset}/{stem}-{digest}"
