"""Fixtures shared by every test directory."""

from __future__ import annotations

import importlib.util
import os
import time
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


def worker_binaries() -> set[int]:
    return live_processes(WORKER_BINARY)


@pytest.fixture
def no_leaked_workers():
    """Fails the test if a TFF worker_binary started during it is still alive afterwards."""
    before = worker_binaries()
    yield
    deadline = time.monotonic() + 5
    while (leaked := worker_binaries() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leaked, f"worker_binary processes left running: {sorted(leaked)}"
