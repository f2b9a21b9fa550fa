"""Per-round checkpoints of a training run's full state (model, optimizer and aggregator state).

A checkpoint is the list of the state's flattened leaves, stored as ``round_NNNNNN.npz`` plus a
``round_NNNNNN.json`` with its SHA-256; both are written atomically (temp + rename), the data first, so
a checkpoint exists only once both are complete. The newest ``keep`` checkpoints are kept. A corrupt
or truncated newest checkpoint is skipped with a warning and the previous one is used: the run then
repeats the lost rounds, which is exact because every round is a function of (seed, round).

The same design as ``tff.program.FileProgramStateManager`` (versioned, keep-last-N), without
TensorFlow, so the Airflow side can read how far a run has got. numpy only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks import atomic

log = logging.getLogger(__name__)
_NAME = re.compile(r"^round_(\d{6})\.json$")


class Error(Exception):
    """Base class for checkpoint errors."""


class CorruptCheckpointError(Error):
    """A checkpoint's data does not match its recorded checksum or cannot be decoded."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    round_num: int
    leaves: list[np.ndarray]


class CheckpointStore:
    """Checkpoints of one run, in ``root``; keeps the newest ``keep``."""

    def __init__(self, root: Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1. Got {keep}.")
        self.root = Path(root)
        self.keep = keep

    def _data(self, round_num: int) -> Path:
        return self.root / f"round_{round_num:06d}.npz"

    def _meta(self, round_num: int) -> Path:
        return self.root / f"round_{round_num:06d}.json"

    def save(self, round_num: int, leaves: Sequence[np.ndarray]) -> None:
        arrays = [np.asarray(leaf) for leaf in leaves]
        buffer = io.BytesIO()
        np.savez(buffer, *arrays)
        data = buffer.getvalue()
        atomic.write_bytes(self._data(round_num), data)
        atomic.write_json(
            self._meta(round_num),
            {
                "round": round_num,
                "sha256": hashlib.sha256(data).hexdigest(),
                "num_leaves": len(arrays),
                "shapes": [list(a.shape) for a in arrays],
                "dtypes": [str(a.dtype) for a in arrays],
            },
        )
        self._prune()

    def rounds(self) -> list[int]:
        """Rounds with a complete checkpoint (metadata written), oldest first."""
        if not self.root.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.root.iterdir())
        return sorted(int(m.group(1)) for m in found if m and self._data(int(m.group(1))).exists())

    def load(self, round_num: int) -> Checkpoint:
        try:
            meta = atomic.read_json(self._meta(round_num))
            data = self._data(round_num).read_bytes()
        except (OSError, ValueError) as e:
            raise CorruptCheckpointError(f"Checkpoint of round {round_num} is unreadable: {e}") from e
        actual = hashlib.sha256(data).hexdigest()
        if actual != meta.get("sha256"):
            raise CorruptCheckpointError(
                f"Checkpoint of round {round_num} has SHA-256 {actual[:12]}…, expected {str(meta.get('sha256'))[:12]}…"
            )
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            leaves = [npz[f"arr_{i}"] for i in range(meta["num_leaves"])]
        return Checkpoint(round_num, leaves)

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupt newer ones are logged and skipped."""
        for round_num in reversed(self.rounds()):
            try:
                return self.load(round_num)
            except CorruptCheckpointError as e:
                log.warning("%s; falling back to the previous checkpoint", e)
        return None

    def latest_round(self) -> int | None:
        latest = self.load_latest()
        return None if latest is None else latest.round_num

    def _prune(self) -> None:
        for round_num in self.rounds()[: -self.keep]:
            self._meta(round_num).unlink(missing_ok=True)
            self._data(round_num).unlink(missing_ok=True)
