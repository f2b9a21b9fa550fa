"""MovieLens-100K as a federated ratings data set: one client per user.

The classic 100,000 ratings (943 users, 1,682 movies, GroupLens) ship inside the ``recbole==1.2.1``
wheel as RecBole's atomic file ``recbole/dataset_example/ml-100k/ml-100k.inter``, so they come from
the package registry with the pinned checksum (:mod:`tasks.sources.download`) instead of a download
from grouplens.org. The file is read in place from the wheel (a zip), never installed or extracted.

Each client is one user (id ``str(user_id)``, clients in numeric order); its examples are its
ratings in time order (ties by item id): ``item_id`` (the raw MovieLens id, 1..1682), ``rating``
(1..5) and ``timestamp`` (Unix seconds). The file is 2 MB, so it is parsed whole and validated
strictly: a wrong header or a malformed line is an error naming the line, never silently skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks import atomic
from tasks.shards import Client, Column, Schema
from tasks.sources import download
from tasks.sources.base import Source, SourceError

MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
HEADER = ("user_id:token", "item_id:token", "rating:float", "timestamp:float")
RATING_RANGE = (1.0, 5.0)
COLUMNS = (Column("item_id", "int64"), Column("rating", "float32"), Column("timestamp", "int64"))


def schema() -> Schema:
    return Schema(kind="ratings", columns=COLUMNS)


def parse_inter(data: bytes, where: str = MEMBER) -> dict[str, np.ndarray]:
    """The ratings of a RecBole ``.inter`` file as arrays ``user_id``, ``item_id``, ``rating``,
    ``timestamp``, validated; SourceError naming ``where`` and the line for anything unexpected."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"{where}: not UTF-8 text ({e}). Fix: pass the pinned {download.RECBOLE.filename}.") from e
    lines = text.splitlines()
    header = tuple(lines[0].split("\t")) if lines else ()
    if header != HEADER:
        raise SourceError(f"{where}: expected the tab-separated header {list(HEADER)}. Got {list(header)}. "
                          f"Fix: pass the pinned {download.RECBOLE.filename} (MovieLens-100K in RecBole's format).")
    users, items, ratings, times = [], [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != len(HEADER):
                raise ValueError(f"{len(fields)} tab-separated fields, expected {len(HEADER)}")
            user, item, rating, stamp = int(fields[0]), int(fields[1]), float(fields[2]), float(fields[3])
            if user < 1 or item < 1:
                raise ValueError("user and item ids must be positive integers")
            if not RATING_RANGE[0] <= rating <= RATING_RANGE[1]:
                raise ValueError(f"rating {rating} outside [{RATING_RANGE[0]:g}, {RATING_RANGE[1]:g}]")
            if not (stamp >= 0 and stamp == int(stamp)):
                raise ValueError(f"timestamp {fields[3]!r} is not a whole number of seconds >= 0")
        except ValueError as e:
            shown = line if len(line) <= 120 else line[:117] + "..."
            raise SourceError(f"{where}, line {number}: {e}. Got {shown!r}. Fix: pass the pinned "
                              f"{download.RECBOLE.filename}, unmodified.") from e
        users.append(user)
        items.append(item)
        ratings.append(rating)
        times.append(int(stamp))
    if not users:
        raise SourceError(f"{where}: no ratings after the header. Fix: pass the pinned {download.RECBOLE.filename}.")
    return {"user_id": np.asarray(users, np.int64), "item_id": np.asarray(items, np.int64),
            "rating": np.asarray(ratings, np.float32), "timestamp": np.asarray(times, np.int64)}


class MovieLensSource(Source):
    """MovieLens-100K from the recbole wheel: clients are users, examples their ratings in time order."""

    name = "movielens"
    splits = ("train",)

    def __init__(self, archive: Path | None = None) -> None:
        self.archive = Path(archive) if archive is not None else download.fetch(download.RECBOLE)
        if not self.archive.is_file():
            raise SourceError(f"movielens archive {self.archive} does not exist. Fix: pass the "
                              f"{download.RECBOLE.filename} file, or leave archive unset to fetch it.")
        self._ratings: dict[str, np.ndarray] | None = None

    def ratings(self) -> dict[str, np.ndarray]:
        """All ratings (validated), read once: ``user_id``, ``item_id``, ``rating``, ``timestamp``."""
        if self._ratings is None:
            data = download.read_member(self.archive, MEMBER)
            self._ratings = parse_inter(data, f"{self.archive.name}:{MEMBER}")
        return self._ratings

    def source_facts(self) -> dict[str, Any]:
        """Counts and ranges a model needs (embedding sizes): users, items, ratings, max ids, rating range."""
        r = self.ratings()
        return {"num_users": int(np.unique(r["user_id"]).size), "num_items": int(np.unique(r["item_id"]).size),
                "num_ratings": int(r["user_id"].size), "max_user_id": int(r["user_id"].max()),
                "max_item_id": int(r["item_id"].max()),
                "rating_min": float(r["rating"].min()), "rating_max": float(r["rating"].max())}

    def identity(self) -> dict[str, Any]:
        return {"package": download.RECBOLE.requirement, "file": self.archive.name,
                "sha256": atomic.sha256_file(self.archive), "member": MEMBER}

    def schema(self) -> Schema:
        return schema()

    def clients(self, split: str) -> Iterator[Client]:
        if split not in self.splits:
            raise SourceError(f"the movielens source has only the splits {list(self.splits)}. Got {split!r}.")
        r = self.ratings()
        order = np.lexsort((r["item_id"], r["timestamp"], r["user_id"]))  # last key is the primary one
        users = r["user_id"][order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], users.size]
        for start, end in zip(starts, ends, strict=True):
            rows = order[start:end]
            yield Client(str(int(users[start])), {c.name: r[c.name][rows] for c in COLUMNS})
