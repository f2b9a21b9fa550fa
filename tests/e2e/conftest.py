"""End-to-end fixtures: real Airflow, real MLflow store, real TFF rounds on small settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import steps

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
