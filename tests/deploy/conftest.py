"""The Celery topology of docker-compose.yml, natively: ``python -m tasks.servers up --celery`` on free
loopback ports with AIRFLOW_HOME, data and the MLflow artifacts under a tmp dir; always stopped with
``down`` at the end, on failure too, and its PostgreSQL cluster removed.

Needs Debian's ``postgresql`` and ``redis-server`` (``make topology-deps``; ``make test`` installs them).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import pytest

from tasks import servers, topology
from tests.conftest import worker_binaries
from tests.e2e.conftest import isolated_airflow_env
from tests.servers.conftest import Servers, free_ports

GPU_CONCURRENCY = 2  # above the `gpu` pool's one slot: what keeps the chunks apart must be the pool


def _missing_programs() -> str | None:
    try:
        topology.postgres_bin("initdb")
        topology.redis_bin()
    except servers.StartError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def celery_stack(tmp_path_factory):
    if missing := _missing_programs():
        pytest.skip(missing)
    base = tmp_path_factory.mktemp("celery")
    env = isolated_airflow_env(base)
    airflow_port, mlflow_port, postgres_port, redis_port = free_ports(4)
    env.update({
        "FEDFLOW_TOPOLOGY": "celery",
        "FEDFLOW_AIRFLOW_PORT": str(airflow_port),
        "FEDFLOW_MLFLOW_PORT": str(mlflow_port),
        "FEDFLOW_POSTGRES_PORT": str(postgres_port),
        "FEDFLOW_REDIS_PORT": str(redis_port),
        "FEDFLOW_GPU_CONCURRENCY": str(GPU_CONCURRENCY),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        # A finished task frees its worker slot after this many seconds (default 5).
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    })
    for name in ("FEDFLOW_AIRFLOW_URL", "FEDFLOW_AIRFLOW_PASSWORD", "FEDFLOW_SERVERS_HOST", "FEDFLOW_MLFLOW_UI",
                 "FEDFLOW_POSTGRES_DIR", "AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        env.pop(name, None)
    stack = Servers(base=base, env=env, airflow_url=f"http://127.0.0.1:{airflow_port}",
                    mlflow_url=f"http://127.0.0.1:{mlflow_port}", worker_binaries_before=worker_binaries())
    pg_dir = topology.postgres_dir(stack.home, env)  # where `up` (in env) puts the cluster: this test's own
    try:
        started = time.monotonic()
        stack.start()  # `up`, then waits for the DAG to be parsed and unpauses it
        stack.started_in_s = time.monotonic() - started
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # /var/lib/postgresql/fedflow, when no other cluster is left
            pg_dir.parent.rmdir()
