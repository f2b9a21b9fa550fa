"""Starts and stops fedflow's servers: an MLflow tracking server and Airflow 3's components.

``python -m tasks.servers up | down | status`` (``make up`` / ``make down``). ``up`` starts

- ``mlflow server`` on 127.0.0.1:5000 (``FEDFLOW_MLFLOW_PORT``): the SQLite store of ``mlruns/``
  (``FEDFLOW_MLRUNS_DIR``) and its artifacts, one worker;
- ``scripts/airflow api-server`` on 127.0.0.1:8080 (``FEDFLOW_AIRFLOW_PORT``), ``scheduler``,
  ``dag-processor`` and ``triggerer``: LocalExecutor, SQLite, ``AIRFLOW_HOME`` (default ``.airflow/``);

each in a session of its own with its output in ``$AIRFLOW_HOME/logs/servers/<name>.log`` (a file,
never a pipe: TFF's worker_binary inherits it), and records them in ``$AIRFLOW_HOME/servers.json``
(PID, process start time, command, port). ``down`` stops exactly those processes and all they started
(``tasks/process_records.py``: a reused PID is never signalled); Postgres and Redis go last.

``up --celery`` (``make up-celery``, ``FEDFLOW_TOPOLOGY=celery``) starts the distributed topology of
docker-compose.yml on this machine instead: PostgreSQL and Redis on loopback, Airflow on CeleryExecutor
with a default-queue and a ``gpu``-queue Celery worker, MLflow on Postgres (``tasks/topology.py``).

The Airflow components share one JWT secret (kept in ``$AIRFLOW_HOME``), reach the execution API at the
api-server, and log to the MLflow server over HTTP (``MLFLOW_TRACKING_URI``). Standard library and
psutil only: no Airflow or MLflow import here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

from tasks import paths, process_records
from tasks.process_records import owned_processes as _owned_processes  # noqa: F401 - used by the tests
from tasks.process_records import running_leader as _leader

DEFAULT_HOST = "127.0.0.1"
DEFAULT_AIRFLOW_PORT = 8080
DEFAULT_MLFLOW_PORT = 5000
LOCAL, CELERY = "local", "celery"  # the topologies
DEFAULT_POSTGRES_PORT = 5433  # not 5432: leave a system PostgreSQL alone
DEFAULT_REDIS_PORT = 6380
DEFAULT_GPU_CONCURRENCY = 1  # tasks at once on the gpu-queue worker (the `gpu` pool limits chunks anyway)
START_TIMEOUT_S = 180.0
ADMIN_USER = "admin"  # scripts/airflow: AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
LOG_TAIL_LINES = 30
# Left beside scripts/airflow's `.fedflow-initialised` when `up --celery` created that marker: the SQLite
# database that `up` (local) uses has not been initialised.
CELERY_ONLY_MARKER = ".fedflow-initialised-postgres-only"


class Error(Exception):
    """Base class of the server errors: the message says what went wrong and the fix."""


class PortInUseError(Error):
    """A port the servers need is taken."""


class AlreadyRunningError(Error):
    """``up`` found servers of this AIRFLOW_HOME still running."""


class StartError(Error):
    """A component exited or did not become healthy in time; everything started was stopped."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where the servers listen and keep their files."""

    host: str
    airflow_port: int
    mlflow_port: int
    airflow_home: Path
    mlruns: Path
    topology: str = LOCAL
    postgres_port: int = DEFAULT_POSTGRES_PORT  # the Celery topology's services, always on 127.0.0.1
    redis_port: int = DEFAULT_REDIS_PORT
    gpu_concurrency: int = DEFAULT_GPU_CONCURRENCY

    @classmethod
    def from_env(cls, host: str | None = None, airflow_port: int | None = None,
                 mlflow_port: int | None = None, *, topology: str | None = None, postgres_port: int | None = None,
                 redis_port: int | None = None, gpu_concurrency: int | None = None) -> Settings:
        topology = topology or os.environ.get("FEDFLOW_TOPOLOGY") or LOCAL
        if topology not in (LOCAL, CELERY):
            raise Error(f"Unknown topology {topology!r}. Fix: set FEDFLOW_TOPOLOGY to {LOCAL!r} or {CELERY!r}.")
        return cls(
            host=host or os.environ.get("FEDFLOW_SERVERS_HOST") or DEFAULT_HOST,
            airflow_port=int(airflow_port or os.environ.get("FEDFLOW_AIRFLOW_PORT") or DEFAULT_AIRFLOW_PORT),
            mlflow_port=int(mlflow_port or os.environ.get("FEDFLOW_MLFLOW_PORT") or DEFAULT_MLFLOW_PORT),
            airflow_home=airflow_home(),
            mlruns=paths.mlruns_dir(),
            topology=topology,
            postgres_port=int(postgres_port or os.environ.get("FEDFLOW_POSTGRES_PORT") or DEFAULT_POSTGRES_PORT),
            redis_port=int(redis_port or os.environ.get("FEDFLOW_REDIS_PORT") or DEFAULT_REDIS_PORT),
            gpu_concurrency=int(gpu_concurrency or os.environ.get("FEDFLOW_GPU_CONCURRENCY")
                                or DEFAULT_GPU_CONCURRENCY),
        )

    @property
    def local_host(self) -> str:
        """The address clients on this machine use (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def airflow_url(self) -> str:
        return f"http://{_url_host(self.local_host)}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{_url_host(self.local_host)}:{self.mlflow_port}"

    @property
    def log_dir(self) -> Path:
        return self.airflow_home / "logs" / "servers"

    @property
    def state_file(self) -> Path:
        return state_file(self.airflow_home)

    @property
    def password_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"


@dataclasses.dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    port: int | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # added to the environment it is started with
    user: str | None = None  # started as this user (as root only: PostgreSQL refuses to run as root)
    cwd: Path | None = None
    stop_signal: str = "SIGTERM"  # the first signal of `down` (PostgreSQL: SIGINT, a fast shutdown)
    stop_last: bool = False  # stopped after every other component (what they use: Postgres, Redis)


def airflow_home() -> Path:
    """``AIRFLOW_HOME``, or the project-local ``.airflow/`` that scripts/airflow uses."""
    return Path(os.environ.get("AIRFLOW_HOME") or paths.PROJECT_ROOT / ".airflow").resolve()


def state_file(home: Path) -> Path:
    return home / "servers.json"


def components(s: Settings) -> list[Component]:
    """What ``up`` starts after any services, in start order (MLflow first: the Airflow tasks log to it)."""
    if s.topology == CELERY:
        from tasks import topology

        return topology.components(s)
    mlflow = paths.PROJECT_ROOT / ".venv" / "bin" / "mlflow"
    airflow = str(paths.PROJECT_ROOT / "scripts" / "airflow")
    return [
        Component("mlflow", [
            str(mlflow), "server",
            "--backend-store-uri", f"sqlite:///{s.mlruns / 'mlflow.db'}",
            # New experiments keep their artifacts under mlruns/artifacts/<experiment id> as plain files, as
            # embedded runs do: a run logged through the server and one logged without it (make demo) can
            # share the store both ways. The server still serves them (UI, downloads) and proxies
            # mlflow-artifacts:/ URIs into the same directory.
            "--default-artifact-root", (s.mlruns / "artifacts").as_uri(),
            "--serve-artifacts", "--artifacts-destination", str(s.mlruns / "artifacts"),
            "--host", s.host, "--port", str(s.mlflow_port), "--workers", "1",
            *(["--allowed-hosts", os.environ["FEDFLOW_MLFLOW_ALLOWED_HOSTS"]]
              if os.environ.get("FEDFLOW_MLFLOW_ALLOWED_HOSTS") else []),
        ], s.mlflow_port),
        Component("api-server", [airflow, "api-server", "-H", s.host, "-p", str(s.airflow_port), "-w", "1"],
                  s.airflow_port),
        # Airflow's log servers (8793/8794) bind every interface, hard-coded; on one machine the api-server
        # reads task logs from $AIRFLOW_HOME/logs directly, so they are not started.
        Component("scheduler", [airflow, "scheduler", "--skip-serve-logs"]),
        Component("dag-processor", [airflow, "dag-processor"]),
        Component("triggerer", [airflow, "triggerer", "--skip-serve-logs"]),
    ]


def mlflow_env() -> dict[str, str]:
    env = dict(os.environ)
    # MLflow 3's job runner (GenAI scorers, prompt optimisation: unused here) starts seven huey consumers,
    # ~1.3 GB of memory; on by default.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def airflow_env(s: Settings) -> dict[str, str]:
    """The environment of every Airflow component (the user's own AIRFLOW__* settings win where noted)."""
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(s.airflow_home),
        "FEDFLOW_MLRUNS_DIR": str(s.mlruns),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret(s.airflow_home / "fedflow_jwt_secret"),
        "AIRFLOW__API__SECRET_KEY": _secret(s.airflow_home / "fedflow_api_secret_key"),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
        "MLFLOW_TRACKING_URI": s.mlflow_url,
        "FEDFLOW_MLFLOW_UI": s.mlflow_url,
        "PYTHONUNBUFFERED": "1",
    })
    if s.topology == CELERY:
        from tasks import topology

        env.update(topology.airflow_settings(s))
    env.setdefault("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    env.setdefault("AIRFLOW__CORE__PARALLELISM", "2")  # LocalExecutor pre-forks this many workers
    return env


def up(s: Settings, *, timeout_s: float = START_TIMEOUT_S, out=sys.stdout) -> list[dict]:
    """Starts every component, waits until both servers answer healthy; returns the state records.

    Raises AlreadyRunningError, PortInUseError, or StartError (after stopping what it started).
    """
    if running := status(s.airflow_home):
        raise AlreadyRunningError(
            f"fedflow's servers are already running for AIRFLOW_HOME={s.airflow_home}: "
            + ", ".join(f"{r['name']} (pid {r['pid']}{_port_text(r)})" for r in running)
            + ". Fix: `make down` (python -m tasks.servers down) first, or use another AIRFLOW_HOME.")
    down(s.airflow_home, quiet=True)  # a stale state file: leftovers of a crashed `up`
    if s.airflow_port == s.mlflow_port:
        raise PortInUseError(f"Airflow and MLflow cannot share port {s.airflow_port}. "
                             "Fix: set FEDFLOW_AIRFLOW_PORT or FEDFLOW_MLFLOW_PORT to another port.")
    check_port_free(s.host, s.airflow_port, "Airflow", "FEDFLOW_AIRFLOW_PORT (make up AIRFLOW_PORT=...)")
    check_port_free(s.host, s.mlflow_port, "MLflow", "FEDFLOW_MLFLOW_PORT (make up MLFLOW_PORT=...)")
    for exe in (paths.PROJECT_ROOT / ".venv" / "bin" / "mlflow", paths.PROJECT_ROOT / ".venv" / "bin" / "airflow"):
        if not exe.exists():
            raise StartError(f"{exe} is missing. Fix: run `make envs`.")
    if s.topology == CELERY:
        from tasks import topology

        topology.check(s)

    s.log_dir.mkdir(parents=True, exist_ok=True)
    s.mlruns.mkdir(parents=True, exist_ok=True)
    env = airflow_env(s)
    started = time.monotonic()
    records: list[dict] = []

    def start(c: Component, component_env: dict[str, str]) -> dict:
        records.append(_start(c, s, {**component_env, **c.env}))
        _write_state(s.airflow_home, records)  # after every start: `down` finds even a half-done `up`
        return records[-1]

    try:
        if s.topology == CELERY:
            topology.start_services(s, start)  # Postgres and Redis, ready, with the databases and users
            topology.initialise_airflow_db(s, env)
        else:
            _initialise_airflow_home(s, env)
        for c in components(s):
            start(c, mlflow_env() if c.name == "mlflow" else env)
        _wait_healthy(s, records, timeout_s)
    except BaseException:
        down(s.airflow_home, quiet=True)
        raise
    print(f"fedflow servers are up ({time.monotonic() - started:.0f} s):\n"
          f"  Airflow  {s.airflow_url}   user {ADMIN_USER}, password in {s.password_file}\n"
          f"  MLflow   {s.mlflow_url}\n"
          + (topology.summary(s) if s.topology == CELERY else "")
          + f"  logs     {s.log_dir}/\n"
          f"  trigger  make trigger DAG=federated_training CONF='{{\"rounds\": 10}}'\n"
          f"  stop     make down", file=out)
    return records


def down(home: Path | None = None, *, quiet: bool = False, out=sys.stdout) -> list[str]:
    """Stops what ``up`` recorded for ``home`` and everything they started; returns the names stopped."""
    home = home or airflow_home()
    records = _read_state(home)
    if not records:
        if not quiet:
            print(f"No fedflow servers recorded in {state_file(home)}.", file=out)
        return []
    stopped: list[str] = []
    killed: list[str] = []
    # What the others use (Postgres, Redis) goes last: a database stopped under its clients fails their shutdown.
    for wave in ([r for r in records if not r.get("stop_last")], [r for r in records if r.get("stop_last")]):
        if wave:
            wave_stopped, wave_killed = process_records.stop(wave)
            stopped += wave_stopped
            killed += wave_killed
    state_file(home).unlink(missing_ok=True)
    if not quiet:
        for r in records:
            word = "stopped" if r["name"] in stopped else "was not running"
            print(f"  {r['name']:<14} pid {r['pid']:<8} {word}", file=out)
        if killed:
            print(f"  killed (no exit on SIGTERM): {', '.join(killed)}", file=out)
    return stopped


def status(home: Path | None = None) -> list[dict]:
    """The recorded components still running (their leader alive with the recorded start time)."""
    return [r for r in _read_state(home or airflow_home()) if _leader(r) is not None]


def check_port_free(host: str, port: int, what: str, override: str) -> None:
    """Raises PortInUseError naming the port, who holds it when visible, and the fix."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise PortInUseError(f"Cannot bind {what}'s port {host}:{port}: {e}. "
                                     f"Fix: choose another host or port with {override}.") from e
    holder = _port_holder(port)
    raise PortInUseError(
        f"Port {port} on {host} (for {what}) is already in use{f' by {holder}' if holder else ''}. "
        f"Fix: stop that process, or set {override} to a free port.")


# --- internals ------------------------------------------------------------------------------------


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _port_text(record: dict) -> str:
    return f", port {record['port']}" if record.get("port") else ""


def _secret(path: Path) -> str:
    """A secret generated once and kept in ``path`` (mode 0600): every component must share it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        os.replace(tmp, path)
    return path.read_text().strip()


def _initialise_airflow_home(s: Settings, env: dict[str, str]) -> None:
    """scripts/airflow migrates the DB and creates the `gpu` pool on first use; do it once, before four
    components would race to do it at the same time."""
    marker, celery_only = s.airflow_home / ".fedflow-initialised", s.airflow_home / CELERY_ONLY_MARKER
    if marker.exists() and not celery_only.exists():
        return
    # `up --celery` initialised this AIRFLOW_HOME's Postgres database, not the SQLite one used here.
    marker.unlink(missing_ok=True)
    celery_only.unlink(missing_ok=True)
    log = s.log_dir / "init.log"
    with open(log, "w") as f:
        done = subprocess.run([str(paths.PROJECT_ROOT / "scripts" / "airflow"), "version"], env=env,
                              stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, timeout=600)
    if done.returncode != 0:
        raise StartError(f"Initialising AIRFLOW_HOME={s.airflow_home} failed. Last lines of {log}:\n{_tail(log)}")


def _start(c: Component, s: Settings, env: dict[str, str]) -> dict:
    log = s.log_dir / f"{c.name}.log"
    as_user = {"user": c.user, "group": c.user, "extra_groups": []} if c.user else {}
    with open(log, "wb") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(c.argv, stdin=devnull, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=c.cwd or paths.PROJECT_ROOT, env=env, **as_user)
    try:
        started_at = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        started_at = 0.0  # already gone: _wait_healthy reports it with its log
    record = {"name": c.name, "pid": proc.pid, "create_time": started_at, "port": c.port,
              "command": c.argv, "log": str(log), "home": str(s.airflow_home)}
    if c.stop_signal != "SIGTERM" or c.stop_last:
        record.update(stop_signal=c.stop_signal, stop_last=c.stop_last)
    return record


def _wait_healthy(s: Settings, records: list[dict], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting_for = "both servers"
    while time.monotonic() < deadline:
        for r in records:
            if _leader(r) is None:
                raise StartError(f"{r['name']} exited while starting. Last lines of {r['log']}:\n{_tail(Path(r['log']))}")
        mlflow_ok = _get(f"{s.mlflow_url}/health") is not None
        health = _get(f"{s.airflow_url}/api/v2/monitor/health")
        unhealthy = _unhealthy_airflow_parts(health)
        if s.topology == CELERY and not unhealthy:
            from tasks import topology

            unhealthy = topology.workers_not_ready(records)
        if mlflow_ok and not unhealthy:
            return
        waiting_for = ", ".join([*([] if mlflow_ok else ["mlflow"]), *unhealthy])
        time.sleep(0.5)
    name = waiting_for.split(",")[0].strip()
    log = next((r["log"] for r in records if r["name"] == name), s.log_dir / "api-server.log")
    raise StartError(f"Not healthy after {timeout_s:.0f} s: {waiting_for}. Last lines of {log}:\n{_tail(Path(log))}")


def _unhealthy_airflow_parts(health: bytes | None) -> list[str]:
    """Airflow components not yet reported healthy by /api/v2/monitor/health (all of them if it is down)."""
    parts = {"metadatabase": "api-server", "scheduler": "scheduler", "dag_processor": "dag-processor",
             "triggerer": "triggerer"}
    if health is None:
        return ["api-server"]
    try:
        body = json.loads(health)
    except ValueError:
        return ["api-server"]
    return [name for key, name in parts.items() if (body.get(key) or {}).get("status") != "healthy"]


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read() if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _port_holder(port: int) -> str | None:
    """'pid N (name)' of a process listening on ``port``, when this user may see it."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    return None


def _write_state(home: Path, records: list[dict]) -> None:
    path = state_file(home)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, path)


def _read_state(home: Path) -> list[dict]:
    try:
        records = json.loads(state_file(home).read_text())
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise Error(f"{state_file(home)} is not valid JSON ({e}). Fix: stop the servers by hand, then delete it.") from e
    return records if isinstance(records, list) else []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.servers", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("up", help="start MLflow and Airflow; wait until both are healthy")
    start.add_argument("--host", help=f"bind address (FEDFLOW_SERVERS_HOST, default {DEFAULT_HOST})")
    start.add_argument("--airflow-port", type=int, help=f"FEDFLOW_AIRFLOW_PORT, default {DEFAULT_AIRFLOW_PORT}")
    start.add_argument("--mlflow-port", type=int, help=f"FEDFLOW_MLFLOW_PORT, default {DEFAULT_MLFLOW_PORT}")
    start.add_argument("--celery", action="store_const", const=CELERY, dest="topology",
                       help="the distributed topology: PostgreSQL, Redis, CeleryExecutor with a default-queue and "
                            "a gpu-queue worker, MLflow on PostgreSQL (FEDFLOW_TOPOLOGY=celery)")
    start.add_argument("--postgres-port", type=int,
                       help=f"with --celery: FEDFLOW_POSTGRES_PORT, default {DEFAULT_POSTGRES_PORT}")
    start.add_argument("--redis-port", type=int, help=f"with --celery: FEDFLOW_REDIS_PORT, default {DEFAULT_REDIS_PORT}")
    start.add_argument("--gpu-concurrency", type=int,
                       help=f"with --celery: tasks at once on the gpu-queue worker (FEDFLOW_GPU_CONCURRENCY, "
                            f"default {DEFAULT_GPU_CONCURRENCY})")
    start.add_argument("--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for health")
    sub.add_parser("down", help="stop what `up` started (and their children)")
    show = sub.add_parser("status", help="list the running components")
    show.add_argument("--json", action="store_true", help="print the state records as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(Settings.from_env(args.host, args.airflow_port, args.mlflow_port, topology=args.topology,
                                 postgres_port=args.postgres_port, redis_port=args.redis_port,
                                 gpu_concurrency=args.gpu_concurrency), timeout_s=args.timeout)
        elif args.command == "down":
            down()
        else:
            running = status()
            if args.json:
                print(json.dumps(running, indent=2))
            elif not running:
                print(f"No fedflow servers running (AIRFLOW_HOME={airflow_home()}).")
            for r in [] if args.json else running:
                print(f"  {r['name']:<14} pid {r['pid']:<8} {'port ' + str(r['port']) if r['port'] else '':<10} "
                      f"log {r['log']}")
            return 0 if running else 3
    except Error as e:
        print(f"servers {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from tasks import servers  # one module, not two: tasks.topology raises tasks.servers' errors

    sys.exit(servers.main())
