"""Atomic file writes: a reader sees the old file or the complete new one, never a half."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, *, compact: bool = False) -> None:
    """Pretty by default; ``compact`` for large documents (Python's indenting encoder is slow and
    holds every fragment in memory)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":")) if compact else json.dumps(
        value, indent=2, sort_keys=True)
    write_bytes(path, (text + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_dir(new: Path, target: Path) -> None:
    """Puts the complete directory ``new`` (written beside ``target``) in ``target``'s place: the old one is
    renamed aside first and deleted after, so ``target`` is never a half-written directory."""
    old = target.parent / f".{target.name}-old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
