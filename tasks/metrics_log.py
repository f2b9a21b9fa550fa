"""``metrics.jsonl``: one JSON object per round, the source of truth for a run's metrics.

The trainer appends a row per round (fsynced) before it checkpoints that round; on resume it drops
rows after the checkpoint it resumes from, so the file always describes one consistent history.
The Airflow side reads it to stream metrics into MLflow. Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tasks import atomic


def append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Complete rows in file order; a torn last line (a writer killed mid-write) is ignored."""
    return _parse(path)[0]


def _parse(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(complete rows, number of lines in the file)."""
    if not Path(path).exists():
        return [], 0
    lines = Path(path).read_text().splitlines(keepends=True)
    rows = []
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows, len(lines)


def truncate_after(path: Path, round_num: int) -> int:
    """Keeps only rows with ``round <= round_num`` (and drops a torn last line); returns how many
    complete rows were dropped."""
    rows, num_lines = _parse(path)
    kept = [r for r in rows if r["round"] <= round_num]
    if len(kept) != num_lines:
        atomic.write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept).encode())
    return len(rows) - len(kept)
