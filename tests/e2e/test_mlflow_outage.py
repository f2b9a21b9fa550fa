"""An MLflow server that goes away while a chunk trains: the chunk finishes, the rounds wait in
metrics.jsonl, and once the server is back every round arrives in MLflow exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tasks import metrics_log, steps, tracking
from tasks.paths import RunPaths
from tests.conftest import ROOT
from tests.e2e.conftest import prepared_run

pytestmark = pytest.mark.slow
ROUNDS = 6
PAUSED_AFTER = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on a loopback port over a store that survives restarts."""

    def __init__(self, store: Path, port: int) -> None:
        self.store, self.port, self.proc = store, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.store / "server.log", "ab") as out:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
                 "--default-artifact-root", (self.store / "artifacts").as_uri()],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"mlflow server did not start: {(self.store / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path / "mlflow-server", free_port())
    srv.start()
    yield srv
    srv.stop()


def test_a_chunk_trains_through_an_mlflow_outage_and_every_round_arrives_once(
    fedflow_env, server, tmp_path, monkeypatch, no_leaked_workers
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    resume = tmp_path / "resume"
    monkeypatch.setenv("FEDFLOW_FAULT", f"pause_after_round={PAUSED_AFTER}")
    monkeypatch.setenv("FEDFLOW_FAULT_RESUME_FILE", str(resume))
    handle = prepared_run("mlflow-outage", rounds=ROUNDS, rounds_per_chunk=ROUNDS)
    run = RunPaths(Path(handle["run_dir"]))
    rid = tracking.run_id(run)
    seen_before_outage: list[int] = []

    def break_mlflow_mid_run() -> None:
        try:  # wait until the streaming sync has the rounds before the pause, then stop the server
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                steps_logged = [m.step for m in tracking.client().get_metric_history(rid, tracking.ROUND_MARKER)]
                if len(steps_logged) >= PAUSED_AFTER:
                    seen_before_outage.extend(steps_logged)
                    break
                time.sleep(0.5)
            server.stop()
        finally:
            resume.touch()  # the trainer goes on either way; the assertions below tell what happened

    watcher = threading.Thread(target=break_mlflow_mid_run, daemon=True)
    watcher.start()
    outcome = steps.train_chunk(handle, 0)  # rounds 3..6 train while MLflow is down
    watcher.join(timeout=60)

    assert seen_before_outage == [1, 2]
    assert outcome["status"] == "trained" and outcome["mlflow_reachable"] is False
    assert [row["round"] for row in metrics_log.read_rows(run.metrics)] == list(range(1, ROUNDS + 1))
    assert not tracking.reachable()

    server.start()  # back: the next task's sync (here: the same chunk, retried) catches up
    again = steps.train_chunk(handle, 0)

    assert again["status"] == "done"
    c = tracking.client()
    for key in ("train_loss", "train_accuracy", "round_seconds"):
        assert [m.step for m in c.get_metric_history(rid, key)] == list(range(1, ROUNDS + 1)), key
    assert sorted(m.step for m in c.get_metric_history(rid, "test_accuracy")) == [2, 4, 6]
