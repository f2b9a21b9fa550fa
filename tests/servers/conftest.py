"""Real servers for the tests in this directory: one ``python -m tasks.servers up`` for the whole
package, on free loopback ports, with AIRFLOW_HOME, data and the MLflow store under a tmp dir; always
stopped with ``down`` at the end, on failure too.

Every command's output goes to a file under the tmp dir (never a pipe: a task's TFF worker_binary
inherits it). Scheduled DAGs in dags/ start paused here, so only what a test triggers runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from tasks import airflow_api, servers
from tests.conftest import ROOT, worker_binaries
from tests.e2e.conftest import SMALL, isolated_airflow_env

DAG_ID = "federated_training"
# A small experiment (2 chunks of 2 rounds): ~1 min of training on 2 cores.
EXPERIMENT = {**SMALL, "rounds": 4, "rounds_per_chunk": 2}
START_TIMEOUT_S = 300


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 (all held open until each is chosen, so they differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclasses.dataclass
class Servers:
    """The running servers of this test package, and how to reach them."""

    base: Path
    env: dict[str, str]
    airflow_url: str
    mlflow_url: str
    stopped: bool = False
    worker_binaries_before: set[int] = dataclasses.field(default_factory=set)

    @property
    def home(self) -> Path:
        return Path(self.env["AIRFLOW_HOME"])

    def api(self) -> airflow_api.Client:
        return airflow_api.Client(self.airflow_url, servers.ADMIN_USER,
                                  airflow_api.default_password(servers.ADMIN_USER, self.home))

    def cli(self, module: str, *args: str, log_name: str, timeout: float = 900,
            env: dict[str, str] | None = None) -> tuple[int, str]:
        """``python -m <module> <args>`` in the servers' environment (or ``env``); returns (exit status,
        its output)."""
        log = self.base / "logs" / f"{log_name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            done = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", module, *args], env=env or self.env,
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout)
        return done.returncode, log.read_text()

    def processes(self) -> list[psutil.Process]:
        """Every live process ``up`` started: the recorded ones, their process groups and descendants."""
        found: dict[int, psutil.Process] = {}
        for record in servers.status(self.home):
            for p in servers._owned_processes(record):
                found[p.pid] = p
                with contextlib.suppress(psutil.Error):
                    found.update({c.pid: c for c in p.children(recursive=True)})
        return list(found.values())

    def start(self) -> None:
        rc, out = self.cli("tasks.servers", "up", "--timeout", str(START_TIMEOUT_S), log_name="up",
                           timeout=START_TIMEOUT_S + 120)
        assert rc == 0, f"`python -m tasks.servers up` failed:\n{out}"
        self.stopped = False
        api = self.api()
        api.wait_for_dag(DAG_ID, timeout_s=120)
        api.unpause(DAG_ID)

    def stop(self) -> str:
        rc, out = self.cli("tasks.servers", "down", log_name="down", timeout=120)
        if rc != 0:  # never leave servers behind, even if the CLI broke
            servers.down(self.home, quiet=True)
        self.stopped = True
        return out


@pytest.fixture(scope="package")
def server_stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("servers")
    env = isolated_airflow_env(base)
    airflow_port, mlflow_port = free_ports(2)
    env.update({
        "FEDFLOW_AIRFLOW_PORT": str(airflow_port),
        "FEDFLOW_MLFLOW_PORT": str(mlflow_port),
        "PYTHONPATH": str(ROOT),
        # A finished task frees its executor slot after this many seconds (default 5).
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    })
    for name in ("FEDFLOW_AIRFLOW_URL", "FEDFLOW_AIRFLOW_PASSWORD", "FEDFLOW_SERVERS_HOST", "FEDFLOW_MLFLOW_UI"):
        env.pop(name, None)
    stack = Servers(base=base, env=env, airflow_url=f"http://127.0.0.1:{env['FEDFLOW_AIRFLOW_PORT']}",
                    mlflow_url=f"http://127.0.0.1:{env['FEDFLOW_MLFLOW_PORT']}",
                    worker_binaries_before=worker_binaries())
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def live_servers(server_stack) -> Servers:
    """The package's servers, started again if a test stopped them."""
    if server_stack.stopped:
        server_stack.start()
    return server_stack


def mlflow_get(stack: Servers, endpoint: str, **query) -> dict:
    """A GET of MLflow's REST API (``/api/2.0/mlflow/<endpoint>``)."""
    import urllib.parse
    import urllib.request

    url = f"{stack.mlflow_url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())
