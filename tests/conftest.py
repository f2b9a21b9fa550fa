"""Fixtures shared by every test directory."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
# In-process Airflow (DagBag, Params) uses the project-local home, never ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# tests/trainer imports TensorFlow: it runs in the TFF environment (`make test` runs both).
collect_ignore = [] if importlib.util.find_spec("tensorflow_federated") else ["trainer"]
# TFF starts it as .../tensorflow_federated/python/core/impl/executor_stacks/../../../../data/worker_binary
WORKER_BINARY = "data/worker_binary"
# Every process this pytest starts inherits the token (the launcher, Airflow and the servers pass the
# environment on), so the leak checks count only this session's worker_binaries: a second test session
# or a trainer running beside it on the same machine is not mistaken for a leak.
SESSION_TOKEN = os.environ.setdefault("FEDFLOW_TEST_SESSION", uuid.uuid4().hex)


def seed_source_cache(filename: str, data_dir: Path) -> None:
    """Copies the project's cached copy of a pinned source file (``data/sources``, tasks/sources/download.py) into
    ``data_dir``'s cache, so a run on a test data directory does not fetch it with pip again (nothing when the
    project has none: the run then fetches it)."""
    cached = ROOT / "data" / "sources" / filename
    if cached.is_file():
        (data_dir / "sources").mkdir(parents=True, exist_ok=True)
        shutil.copy(cached, data_dir / "sources" / filename)


def live_processes(fragment: str) -> set[int]:
    """PIDs of live (non-zombie) processes whose command line contains ``fragment``."""
    found = set()
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and fragment in " ".join(proc.info["cmdline"] or []):
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _started_by_this_session(pid: int) -> bool:
    try:
        return psutil.Process(pid).environ().get("FEDFLOW_TEST_SESSION") == SESSION_TOKEN
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process cannot be told apart: count it, to be safe
        return True


def worker_binaries() -> set[int]:
    """Live worker_binaries started from this test session (see SESSION_TOKEN)."""
    return {pid for pid in live_processes(WORKER_BINARY) if _started_by_this_session(pid)}


@pytest.fixture
def no_leaked_workers():
    """Fails the test if a TFF worker_binary started during it is still alive afterwards."""
    before = worker_binaries()
    yield
    deadline = time.monotonic() + 5
    while (leaked := worker_binaries() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leaked, f"worker_binary processes left running: {sorted(leaked)}"
