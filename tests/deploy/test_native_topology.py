"""The topology of docker-compose.yml, without Docker: PostgreSQL and Redis on loopback, Airflow on
CeleryExecutor with a default-queue and a `gpu`-queue Celery worker (separate processes), MLflow on
PostgreSQL — and two training runs triggered at once through the REST API.

What it proves: the training chunks run on the gpu-queue worker and nowhere else (the rest on the
default worker); the `gpu` pool's one slot keeps the chunks of both runs strictly one after another
while the runs themselves overlap — with the gpu worker's concurrency at 2, so it is the pool, not the
worker, that serialises them; the MLflow runs live in PostgreSQL; `down` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from datetime import datetime
from pathlib import Path

import psutil
import psycopg2
import pytest

from tasks import airflow_api, servers, topology
from tests.conftest import worker_binaries
from tests.deploy.conftest import GPU_CONCURRENCY
from tests.servers.conftest import DAG_ID, EXPERIMENT, alive

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600
COMPONENTS = ["postgres", "redis", "mlflow", "api-server", "scheduler", "dag-processor", "triggerer",
              "worker-default", "worker-gpu"]
_RECEIVED = re.compile(r"execute_workload\[([0-9a-f-]+)\] received")


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pss_by_component(stack) -> dict[str, int]:
    """PSS in bytes of each component with everything it started (its tasks and their trainers too)."""
    sizes = {}
    for record in servers.status(stack.home):
        found: dict[int, psutil.Process] = {}
        for p in servers._owned_processes(record):
            found[p.pid] = p
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in p.children(recursive=True)})
        sizes[record["name"]] = 0
        for p in found.values():
            with contextlib.suppress(psutil.Error):
                sizes[record["name"]] += p.memory_full_info().pss
    return sizes


def wait_for_runs(stack, api: airflow_api.Client, run_ids: list[str]) -> tuple[dict[str, dict], dict[str, int]]:
    """Polls both runs until they end; returns them and the PSS per component at the stack's peak."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    peak: dict[str, int] = {}
    while True:
        runs = {r: api.dag_run(DAG_ID, r) for r in run_ids}
        if all(run["state"] in airflow_api.TERMINAL_RUN_STATES for run in runs.values()):
            return runs, peak
        assert time.monotonic() < deadline, f"runs not done after {RUN_TIMEOUT_S} s: " + ", ".join(
            f"{r}: {run['state']}" for r, run in runs.items())
        if sum((sizes := pss_by_component(stack)).values()) > sum(peak.values()):
            peak = sizes
        time.sleep(2)


def postgres(stack, db: str):
    return psycopg2.connect(host="127.0.0.1", port=int(stack.env["FEDFLOW_POSTGRES_PORT"]), dbname=db, user=db,
                            password=topology.database_password(stack.home, db), connect_timeout=10)


def received_by(stack, worker: str) -> set[str]:
    """The Celery task ids the worker's log says it received."""
    return set(_RECEIVED.findall((stack.home / "logs" / "servers" / f"{worker}.log").read_text(errors="replace")))


def on_gpu_queue_task(task_id: str) -> bool:
    """The training chunks, and warm_start (it pretrains when a warm start's model is missing)."""
    return task_id.startswith("train_chunk_") or task_id == "warm_start"


def test_two_concurrent_runs_train_on_the_gpu_worker_one_chunk_at_a_time_tracked_in_postgres(celery_stack):
    stack = celery_stack
    api = stack.api()
    started = time.monotonic()
    run_ids = [api.trigger(DAG_ID, EXPERIMENT, note=f"native topology, run {i}")["dag_run_id"] for i in (1, 2)]
    runs, peak_pss = wait_for_runs(stack, api, run_ids)
    runs_s = time.monotonic() - started
    tis = {r: api.task_instances(DAG_ID, r) for r in run_ids}
    failed = {r: [f"{ti['task_id']} ({ti['state']}): {api.task_error(DAG_ID, r, ti['task_id'], ti['try_number'])}"
                  for ti in tis[r] if ti["state"] in airflow_api.FAILED_TASK_STATES] for r in run_ids}
    assert all(run["state"] == "success" for run in runs.values()), f"failed tasks: {failed}"
    peak_mib = {name: round(size / 2**20) for name, size in peak_pss.items()}
    (stack.base / "measurements.json").write_text(json.dumps(
        {"startup_s": round(stack.started_in_s, 1), "two_runs_s": round(runs_s, 1),
         "peak_pss_mib": sum(peak_mib.values()), "peak_pss_mib_by_component": peak_mib}, indent=2) + "\n")
    print(f"\nnative Celery topology: up in {stack.started_in_s:.0f} s, two runs in {runs_s:.0f} s, "
          f"peak PSS {sum(peak_mib.values())} MiB {peak_mib}")

    # The two DAG runs overlapped in time.
    starts = [ts(run["start_date"]) for run in runs.values()]
    ends = [ts(run["end_date"]) for run in runs.values()]
    assert max(starts) < min(ends), runs

    # Routing: chunks on queue and pool `gpu`, everything else on `default`; each task that ran reports the
    # FEDFLOW_WORKER_ROLE of the worker that ran it.
    executed = [ti for r in run_ids for ti in tis[r] if ti["try_number"] >= 1 and ti["start_date"]]
    chunks = [ti for ti in executed if ti["task_id"].startswith("train_chunk_")]
    on_gpu_queue = [ti for ti in executed if on_gpu_queue_task(ti["task_id"])]  # the chunks and warm_start
    others = [ti for ti in executed if not on_gpu_queue_task(ti["task_id"])]
    assert all(ti["queue"] == "gpu" and ti["pool"] == "gpu" for r in run_ids for ti in tis[r]
               if on_gpu_queue_task(ti["task_id"]))
    assert all(ti["queue"] == "default" for ti in others)
    chunks_per_run = EXPERIMENT["rounds"] // EXPERIMENT["rounds_per_chunk"]
    for r in run_ids:
        trained = [ti for ti in tis[r] if ti["task_id"].startswith("train_chunk_") and ti["state"] == "success"]
        assert len(trained) == chunks_per_run, tis[r]
        for ti in trained:
            chunk = api.xcom(DAG_ID, r, ti["task_id"])
            assert chunk["worker"] == "gpu" and chunk["cuda_visible_devices"] == "0", (ti["task_id"], chunk)
        for task_id in ("stage", "evaluate_and_register"):
            assert api.xcom(DAG_ID, r, task_id)["worker"] == "default", task_id

    # ...and the Celery task of every try that ran went to exactly the worker of its queue.
    with contextlib.closing(postgres(stack, "airflow")) as conn, conn.cursor() as cur:
        cur.execute("SELECT run_id, task_id, external_executor_id FROM task_instance "
                    "WHERE dag_id = %s AND run_id = ANY(%s) AND try_number >= 1", (DAG_ID, run_ids))
        celery_ids = {(run_id, task_id): celery_id for run_id, task_id, celery_id in cur.fetchall()}
    on_gpu, on_default = received_by(stack, "worker-gpu"), received_by(stack, "worker-default")
    assert on_gpu == {celery_ids[ti["dag_run_id"], ti["task_id"]] for ti in on_gpu_queue}
    assert on_default == {celery_ids[ti["dag_run_id"], ti["task_id"]] for ti in others}

    # Both workers carry this host's name; their FEDFLOW_WORKER_ROLE (seen above from inside the tasks:
    # Celery's setproctitle overwrites /proc/<pid>/environ of the worker itself) tells them apart.
    commands = {r["name"]: " ".join(r["command"]) for r in servers.status(stack.home)}
    assert f"--queues gpu --concurrency {GPU_CONCURRENCY} " in commands["worker-gpu"]
    assert "--queues default " in commands["worker-default"]

    # The pool: one slot, and the chunks of both runs never overlapped although the worker could take two
    # at once; at least one chunk was ready (scheduled) while the other run's chunk held the slot.
    assert api.request("GET", "/api/v2/pools/gpu")["slots"] == 1
    intervals = sorted((ts(ti["start_date"]), ts(ti["end_date"]), ti["dag_run_id"], ti["task_id"]) for ti in chunks)
    assert len({run for *_, run, _ in intervals}) == 2
    for (_, end, *first), (start, _, *second) in zip(intervals, intervals[1:], strict=False):
        assert end <= start, f"{first} and {second} overlapped"
    waited = [(b["dag_run_id"], b["task_id"]) for b in chunks for a in chunks
              if a["dag_run_id"] != b["dag_run_id"] and b["scheduled_when"] and b["queued_when"]
              and ts(b["scheduled_when"]) < ts(a["end_date"]) <= ts(b["queued_when"])]
    assert waited, "no chunk ever waited for the pool's slot"

    # MLflow's runs, metrics and model versions are in PostgreSQL (no SQLite store was made).
    with contextlib.closing(postgres(stack, "mlflow")) as conn, conn.cursor() as cur:
        for r in run_ids:
            summary = api.xcom(DAG_ID, r, "evaluate_and_register")
            assert summary["tracking_uri"] == stack.mlflow_url
            cur.execute("SELECT r.status, e.name FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                        "WHERE r.run_uuid = %s", (summary["mlflow_run_id"],))
            assert cur.fetchall() == [("FINISHED", summary["experiment"])]
            cur.execute("SELECT value FROM tags WHERE run_uuid = %s AND key = 'airflow.run_id'",
                        (summary["mlflow_run_id"],))
            assert cur.fetchall() == [(r,)]
            cur.execute("SELECT step FROM metrics WHERE run_uuid = %s AND key = 'train_loss' ORDER BY step",
                        (summary["mlflow_run_id"],))
            assert [step for (step,) in cur.fetchall()] == list(range(1, EXPERIMENT["rounds"] + 1))
            cur.execute("SELECT run_id FROM model_versions WHERE name = %s AND version = %s",
                        (summary["registered_model_name"], int(summary["version"])))
            assert cur.fetchall() == [(summary["mlflow_run_id"],)]
    assert not (Path(stack.env["FEDFLOW_MLRUNS_DIR"]) / "mlflow.db").exists()


def test_down_stops_every_process_and_frees_every_port(celery_stack):  # keep last: it stops the stack
    stack = celery_stack
    assert [r["name"] for r in servers.status(stack.home)] == COMPONENTS
    started = stack.processes()
    assert any(p.username() == topology.POSTGRES_USER for p in started) or psutil.Process().username() != "root"

    out = stack.stop()

    assert out.count(" stopped") == len(COMPONENTS), out
    assert not [p.pid for p in started if alive(p)], out
    assert not worker_binaries() - stack.worker_binaries_before
    for name in ("FEDFLOW_AIRFLOW_PORT", "FEDFLOW_MLFLOW_PORT", "FEDFLOW_POSTGRES_PORT", "FEDFLOW_REDIS_PORT"):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", int(stack.env[name])))  # free again
    # PostgreSQL went down cleanly (a fast shutdown after its clients were gone), not by SIGKILL.
    assert "database system is shut down" in (stack.home / "logs" / "servers" / "postgres.log").read_text()
    rc, out = stack.cli("tasks.servers", "status", log_name="status-after")
    assert rc == 3 and "No fedflow servers running" in out
