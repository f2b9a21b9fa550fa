"""The parts of `make up` / `down` / `trigger` that need no server: ports, process ownership, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tasks import airflow_api, servers, trigger

# A process that starts a child in its own session (as an Airflow task starts the TFF trainer), then waits.
PARENT_WITH_CHILD = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
    "time.sleep(600)\n"
)


def _record(proc: subprocess.Popen, name: str = "component", **changes) -> dict:
    return {"name": name, "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "port": None,
            "command": [], "log": os.devnull, "home": "", **changes}


def _start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _children(proc: subprocess.Popen, count: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 10
    while len(kids := psutil.Process(proc.pid).children(recursive=True)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return kids


def test_a_taken_port_is_refused_naming_the_port_and_the_fix():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(servers.PortInUseError) as refused:
            servers.check_port_free("127.0.0.1", port, "Airflow", "FEDFLOW_AIRFLOW_PORT")
    assert f"Port {port} on 127.0.0.1 (for Airflow) is already in use" in str(refused.value)
    assert "FEDFLOW_AIRFLOW_PORT" in str(refused.value)
    servers.check_port_free("127.0.0.1", port, "Airflow", "FEDFLOW_AIRFLOW_PORT")  # free again


def test_down_stops_the_recorded_process_its_group_and_its_children_in_other_sessions(tmp_path):
    proc = _start(PARENT_WITH_CHILD)
    try:
        child = _children(proc, 1)[0]
        servers._write_state(tmp_path, [_record(proc)])
        assert [r["name"] for r in servers.status(tmp_path)] == ["component"]

        assert servers.down(tmp_path, quiet=True) == ["component"]

        proc.wait(timeout=5)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        assert not servers.state_file(tmp_path).exists()
    finally:
        proc.kill()


def test_down_never_signals_a_pid_whose_start_time_differs(tmp_path):
    proc = _start("import time; time.sleep(600)")
    try:
        # The recorded process is gone and its PID now names another process: a different start time.
        servers._write_state(tmp_path, [_record(proc, create_time=psutil.Process(proc.pid).create_time() - 100)])
        assert servers.status(tmp_path) == []
        assert servers.down(tmp_path, quiet=True) == []
        assert proc.poll() is None  # untouched
    finally:
        proc.kill()
        proc.wait()


def test_up_refuses_while_recorded_servers_run(tmp_path, monkeypatch):
    proc = _start("import time; time.sleep(600)")
    try:
        home = tmp_path / "airflow"
        home.mkdir()
        servers._write_state(home, [_record(proc, name="api-server", port=8080)])
        monkeypatch.setenv("AIRFLOW_HOME", str(home))
        with pytest.raises(servers.AlreadyRunningError, match=r"api-server \(pid \d+, port 8080\).*make down"):
            servers.up(servers.Settings.from_env(airflow_port=1, mlflow_port=2))
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_airflow_param_errors_are_shortened_to_the_sentence_naming_the_param():
    detail = ("Invalid input for param rounds: -1 is less than the minimum of 1\n\nFailed validating 'minimum' "
              "in schema:\n    {'type': 'integer'}\n\nOn instance:\n    -1")
    assert airflow_api.describe_detail(detail) == "Invalid input for param rounds: -1 is less than the minimum of 1"
    fastapi = [{"type": "dict_type", "loc": ["body", "conf"], "msg": "Input should be a valid dictionary"}]
    assert airflow_api.describe_detail(fastapi) == "conf: Input should be a valid dictionary"


def test_the_conf_file_is_updated_by_the_conf_argument(tmp_path):
    conf_file = tmp_path / "experiment.json"
    conf_file.write_text(json.dumps({"rounds": 10, "model": "mlp"}))
    assert trigger.load_conf('{"rounds": 4}', str(conf_file)) == {"rounds": 4, "model": "mlp"}
    assert trigger.load_conf(None, None) == {}
    with pytest.raises(ValueError, match="must be a JSON object"):
        trigger.load_conf("[1, 2]", None)
    with pytest.raises(ValueError, match="not valid JSON"):
        trigger.load_conf("{rounds: 4}", None)


def test_trigger_without_servers_says_how_to_start_them(tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert trigger.main(["federated_training", "--url", f"http://127.0.0.1:{port}", "--password", "x"]) == 4
    assert "make up" in capsys.readouterr().err
    assert trigger.main(["federated_training", "--conf", "{oops"]) == 2
