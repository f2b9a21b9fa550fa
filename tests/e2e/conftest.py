"""End-to-end fixtures: real Airflow, real MLflow store, real TFF rounds on small settings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tasks import steps
from tests.conftest import ROOT

# Small enough for 2 cores, large enough to exercise chunks, evaluation and checkpoints.
SMALL = {
    "num_clients": 8,
    "clients_per_round": 4,
    "min_examples_per_client": 10,
    "rounds": 6,
    "rounds_per_chunk": 2,
    "eval_every": 2,
    "local_epochs": 1,
}


@pytest.fixture(scope="session")
def shared_dirs(tmp_path_factory) -> Path:
    """One data/ and mlruns/ for the whole session, so identical stages are reused across tests."""
    return tmp_path_factory.mktemp("fedflow")


@pytest.fixture
def fedflow_env(shared_dirs, monkeypatch) -> Path:
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(shared_dirs / "data"))
    monkeypatch.setenv("FEDFLOW_MLRUNS_DIR", str(shared_dirs / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FEDFLOW_FAULT", raising=False)
    return shared_dirs


def prepared_run(run_id: str, **overrides) -> dict:
    """A resolved and staged run (as the DAG's first tasks leave it), ready for training chunks."""
    handle = steps.resolve({**SMALL, **overrides}, dag_id="tests", run_id=run_id)
    steps.stage(handle)
    return handle


def isolated_airflow_env(base: Path) -> dict[str, str]:
    """Environment for `scripts/airflow` with its own AIRFLOW_HOME, data and MLflow store under ``base``."""
    env = {**os.environ, "AIRFLOW_HOME": str(base / "airflow"), "FEDFLOW_DATA_DIR": str(base / "data"),
           "FEDFLOW_MLRUNS_DIR": str(base / "mlruns")}
    for name in ("MLFLOW_TRACKING_URI", "FEDFLOW_FAULT"):
        env.pop(name, None)
    return env


def run_airflow(env: dict[str, str], *args: str, log: Path) -> subprocess.CompletedProcess:
    """`scripts/airflow <args>`, output to ``log``: a file, never a pipe (see DESIGN.md on worker_binary)."""
    with open(log, "w") as out:
        return subprocess.run([str(ROOT / "scripts" / "airflow"), *args], env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1200)


def airflow_db_rows(env: dict[str, str], imports: str, query: str) -> list[list]:
    """Rows of a SQLAlchemy ``query`` on the Airflow metadata DB of ``env`` (run in a child process, so
    this process's Airflow settings stay untouched). ``imports`` brings the models the query names."""
    probe = (
        f"import json\nfrom sqlalchemy import select\n{imports}\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        f"    print(json.dumps([list(r) for r in s.execute({query}).all()]))\n"
    )
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", probe], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
