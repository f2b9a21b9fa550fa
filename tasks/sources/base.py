"""The interface every source reader implements, and helpers they share."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks import atomic
from tasks.shards import Client, Schema


class SourceError(Exception):
    """The source cannot be read as the format it claims: the message names the file, the problem
    and the fix. Raised before anything is visible in the staged directory."""


class Source(abc.ABC):
    """A data set with its own clients (a federated source), read lazily.

    ``splits`` lists the splits the source itself provides (``("train",)``, or ``("train", "test")``
    when it ships its own test file); the stage step derives the rest.
    """

    name: str = "source"
    splits: tuple[str, ...] = ("train",)

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description of exactly which data this is (file checksums, versions, options).

        Goes into the staged data set's fingerprint: a changed source file gives a new fingerprint.
        """

    @abc.abstractmethod
    def schema(self) -> Schema:
        """The columns of one example (cheap: reads at most a little of the source)."""

    @abc.abstractmethod
    def clients(self, split: str) -> Iterator[Client]:
        """Yields the clients of ``split`` one at a time, in a deterministic order."""

    def client_sizes(self, split: str) -> dict[str, int]:
        """Example count per client id, in ``clients`` order. Readers override this with a cheap
        listing (h5 dataset shapes, LEAF ``num_samples``); the default reads every client once."""
        return {c.client_id: c.num_examples for c in self.clients(split)}

    def select(self, split: str, client_ids: set[str]) -> Iterator[Client]:
        """The clients of ``split`` whose id is in ``client_ids``; readers override this to skip
        reading the others."""
        return (c for c in self.clients(split) if c.client_id in client_ids)

    scratch_dir: Path | None = None  # where a reader may spill temporary files (the stage's temp dir)


def file_identity(path: Path) -> dict[str, Any]:
    """Name, size and SHA-256 of a source file (the content, not the path, is what counts)."""
    path = Path(path)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": atomic.sha256_file(path)}


def require_file(path: str | Path, what: str) -> Path:
    """``path`` as an existing file (or directory), or a SourceError naming the parameter to fix."""
    if not str(path):
        raise SourceError(f"{what}: no path given. Fix: set source_path to the local file.")
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"{what}: {p} does not exist. Fix: set source_path to an existing local path.")
    return p.resolve()
