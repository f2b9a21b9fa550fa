"""The launcher leaves no process of the trainer's group behind, on every exit path.

A stand-in interpreter (a shell script) plays the trainer: like TFF's worker_binary, the grandchild
it starts inherits the output file and would outlive its parent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tasks import launch

FAKE_PYTHON = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    # Called as: <this> -m trainer <mode> <pidfile>
    mode="$3"; pidfile="$4"
    sleep 1000 &                # the 'worker_binary': inherits stdout, outlives us
    echo $! > "$pidfile"
    echo "trainer says hello"
    case "$mode" in
      ok)   exit 0 ;;
      fail) echo "boom" ; exit 3 ;;
      hang) exec sleep 1000 ;;
      stubborn) trap '' TERM; while true; do sleep 0.1; done ;;
    esac
    """
)


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    script = tmp_path / "python"
    script.write_text(FAKE_PYTHON)
    script.chmod(0o755)
    monkeypatch.setenv("FEDFLOW_TFF_PYTHON", str(script))
    monkeypatch.setattr(launch, "GRACE_SECONDS", 1.0)
    return tmp_path


def grandchild(pidfile: Path) -> int:
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the fake trainer never started its child"
        time.sleep(0.05)
    return int(pidfile.read_text())


def assert_gone(pid: int) -> None:
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    assert proc.status() == psutil.STATUS_ZOMBIE, f"process {pid} is still running"


def test_success_kills_the_grandchild_and_keeps_the_log(fake_trainer):
    log_path = fake_trainer / "logs" / "chunk.log"
    launch.run_trainer(["ok", str(fake_trainer / "pid")], log_path=log_path, timeout_s=30, poll_seconds=0.1)
    assert_gone(grandchild(fake_trainer / "pid"))
    assert "trainer says hello" in log_path.read_text()


def test_failure_raises_with_the_log_tail_and_kills_the_grandchild(fake_trainer):
    with pytest.raises(launch.TrainerFailedError, match=r"status 3(.|\n)*boom"):
        launch.run_trainer(["fail", str(fake_trainer / "pid")], log_path=fake_trainer / "c.log", timeout_s=30,
                           poll_seconds=0.1)
    assert_gone(grandchild(fake_trainer / "pid"))


def test_timeout_kills_the_whole_group_even_when_sigterm_is_ignored(fake_trainer):
    with pytest.raises(launch.TrainerTimeoutError, match="chunk_timeout_minutes"):
        launch.run_trainer(["stubborn", str(fake_trainer / "pid")], log_path=fake_trainer / "c.log", timeout_s=1,
                           poll_seconds=0.1)
    assert_gone(grandchild(fake_trainer / "pid"))


def test_an_exception_arriving_while_waiting_kills_the_group(fake_trainer):
    class AirflowLikeTimeout(BaseException):  # Airflow's execution_timeout raises in the task's frame
        pass

    def raise_once_started():
        if (fake_trainer / "pid").exists():
            raise AirflowLikeTimeout

    with pytest.raises(AirflowLikeTimeout):
        launch.run_trainer(["hang", str(fake_trainer / "pid")], log_path=fake_trainer / "c.log", timeout_s=60,
                           on_poll=raise_once_started, poll_seconds=0.1)
    assert_gone(grandchild(fake_trainer / "pid"))


def test_sigterm_to_the_task_process_kills_the_trainer_group(fake_trainer):
    pidfile = fake_trainer / "pid"
    code = (
        "from pathlib import Path\nfrom tasks import launch\n"
        f"launch.run_trainer(['hang', {str(pidfile)!r}], log_path=Path({str(fake_trainer / 'c.log')!r}), "
        "timeout_s=120, poll_seconds=0.1)\n"
    )
    task = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child = grandchild(pidfile)
    task.send_signal(signal.SIGTERM)
    assert task.wait(timeout=60) != 0
    assert_gone(child)


def test_streaming_errors_are_logged_not_raised(fake_trainer, caplog):
    def broken_stream():
        raise ConnectionError("MLflow is down")

    launch.run_trainer(["ok", str(fake_trainer / "pid")], log_path=fake_trainer / "c.log", timeout_s=30,
                       on_poll=broken_stream, poll_seconds=0.01)
    # The 'ok' trainer may exit before the first poll; when it did poll, the failure was only logged.
    assert all("MLflow is down" in r.getMessage() for r in caplog.records if "Streaming" in r.getMessage())


def test_a_missing_tff_environment_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_TFF_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(launch.Error, match="make envs"):
        launch.run_trainer(["train"], log_path=tmp_path / "c.log", timeout_s=5)
