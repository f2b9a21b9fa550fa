"""The distributed topology of docker-compose.yml on one machine, without Docker (``up --celery``).

``python -m tasks.servers up --celery`` (``make up-celery``) starts, each as a recorded component of
``tasks.servers`` (so ``make down`` stops exactly them, Postgres and Redis last):

- ``postgres``: Debian's PostgreSQL on 127.0.0.1:5433 (``FEDFLOW_POSTGRES_PORT``), a cluster of its own
  (``postgres_dir``), databases and users ``airflow`` and ``mlflow``;
- ``redis``: ``redis-server`` on 127.0.0.1:6380 (``FEDFLOW_REDIS_PORT``), password-protected, in memory;
- ``mlflow`` on the ``mlflow`` database; Airflow's api-server, scheduler, dag-processor and triggerer
  on CeleryExecutor (metadata and Celery results in ``airflow``, Redis as the broker);
- ``worker-default``: a Celery worker of queue ``default`` (concurrency 2), ``FEDFLOW_WORKER_ROLE=default``;
- ``worker-gpu``: a Celery worker of queue ``gpu`` — the training chunks — with concurrency
  ``FEDFLOW_GPU_CONCURRENCY`` (1), ``FEDFLOW_WORKER_ROLE=gpu``, pinned to one GPU with
  ``CUDA_VISIBLE_DEVICES`` = ``FEDFLOW_GPU_DEVICE`` (0); the default worker sees no GPU. The `gpu` pool (one slot per GPU)
  limits the chunks of all runs together; this concurrency only bounds what the worker accepts.

PostgreSQL refuses to run as root: as root its files live in ``/var/lib/postgresql/fedflow/<hash of
AIRFLOW_HOME>/`` and it runs as the ``postgres`` user; otherwise in ``$AIRFLOW_HOME/postgres/`` as the
current user. Local connections use peer authentication (the socket directory is private), TCP ones
scram-sha-256; the generated passwords are kept in ``$AIRFLOW_HOME`` (mode 0600) and reach the
components through their environment, never their command line. Standard library and psutil only.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path

from tasks import paths, servers

DEFAULT_WORKER_CONCURRENCY = 2
DATABASES = ("airflow", "mlflow")
# Redis hands a task to another worker when it is not acknowledged within this many seconds: above the
# longest chunk (CHUNK_TIMEOUT, 24 h), or a long chunk would run twice.
VISIBILITY_TIMEOUT_S = 90_000
SERVICE_TIMEOUT_S = 60.0
POSTGRES_USER = "postgres"  # the OS user PostgreSQL runs as when we are root (Debian's package creates it)
_SOCKET_PATH_MAX = 100  # sockaddr_un holds 107 bytes, ".s.PGSQL.<port>" included


# --- where things are ------------------------------------------------------------------------------


def postgres_dir(home: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The PostgreSQL cluster of ``home`` (``FEDFLOW_POSTGRES_DIR`` of ``environ`` — default: this
    process's environment — overrides): ``data/`` and the socket."""
    environ = os.environ if environ is None else environ
    if environ.get("FEDFLOW_POSTGRES_DIR"):
        return Path(environ["FEDFLOW_POSTGRES_DIR"]).resolve()
    if os.geteuid() == 0:  # postgres must reach it: not under a root-only directory such as pytest's tmp
        key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
        return Path("/var/lib/postgresql/fedflow") / key
    return home / "postgres"


def _socket_dir(home: Path) -> Path:
    base = postgres_dir(home)
    if len(str(base)) + len("/.s.PGSQL.65535") <= _SOCKET_PATH_MAX:
        return base
    key = hashlib.sha256(str(base).encode()).hexdigest()[:16]
    return Path("/tmp") / f"fedflow-pg-{os.geteuid()}-{key}"


def postgres_bin(name: str) -> str:
    """A PostgreSQL program: Debian's newest /usr/lib/postgresql/<version>/bin, else from PATH."""
    versions = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / name).exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if versions:
        return str(versions[-1] / name)
    if found := shutil.which(name):
        return found
    raise servers.StartError(f"PostgreSQL's {name} is missing. Fix: `make topology-deps` "
                             "(apt-get install postgresql redis-server).")


def redis_bin() -> str:
    if found := shutil.which("redis-server"):
        return found
    raise servers.StartError("redis-server is missing. Fix: `make topology-deps` (apt-get install redis-server).")


def _password(s: servers.Settings, what: str) -> str:
    return servers._secret(s.airflow_home / f"fedflow_{what}_password")


def database_url(s: servers.Settings, db: str, driver: str = "postgresql+psycopg2") -> str:
    """The SQLAlchemy URL of database ``db`` as its user ``db``, over TCP on loopback."""
    password = urllib.parse.quote(_password(s, f"postgres_{db}"), safe="")
    return f"{driver}://{db}:{password}@127.0.0.1:{s.postgres_port}/{db}"


def database_password(home: Path, db: str) -> str:
    """The generated password of database user ``db`` (``airflow`` or ``mlflow``) of ``home``."""
    return (home / f"fedflow_postgres_{db}_password").read_text().strip()


def broker_url(s: servers.Settings) -> str:
    return f"redis://:{urllib.parse.quote(_password(s, 'redis'), safe='')}@127.0.0.1:{s.redis_port}/0"


# --- what runs -------------------------------------------------------------------------------------


def airflow_settings(s: servers.Settings) -> dict[str, str]:
    """The environment every Airflow component of the Celery topology shares, on top of ``airflow_env``."""
    settings = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url(s, "airflow"),
        "AIRFLOW__CELERY__BROKER_URL": broker_url(s),
        "AIRFLOW__CELERY__RESULT_BACKEND": database_url(s, "airflow", "db+postgresql+psycopg2"),
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
    }
    # No pre-forked executor processes here: the scheduler may run more tasks at once than `up` (local) does.
    settings["AIRFLOW__CORE__PARALLELISM"] = os.environ.get("AIRFLOW__CORE__PARALLELISM", "8")
    return settings


def components(s: servers.Settings) -> list[servers.Component]:
    """MLflow, Airflow's four components and the two Celery workers, in start order."""
    mlflow = paths.PROJECT_ROOT / ".venv" / "bin" / "mlflow"
    airflow = str(paths.PROJECT_ROOT / "scripts" / "airflow")

    def worker(role: str, concurrency: int, cuda_devices: str) -> servers.Component:
        # Distinct Celery names (two workers on one host); no log server: both would bind 8793 on every
        # interface, and the api-server reads task logs from $AIRFLOW_HOME/logs on this machine anyway.
        return servers.Component(f"worker-{role}", [
            airflow, "celery", "worker", "--queues", role, "--concurrency", str(concurrency),
            "--celery-hostname", f"{role}@%h", "--skip-serve-logs", "--without-mingle", "--without-gossip",
        ], env={"FEDFLOW_WORKER_ROLE": role, "CUDA_VISIBLE_DEVICES": cuda_devices})

    return [
        servers.Component("mlflow", [
            str(mlflow), "server",
            # The store's URL (with its password) goes in the environment, not on the command line.
            "--default-artifact-root", (s.mlruns / "artifacts").as_uri(),
            "--serve-artifacts", "--artifacts-destination", str(s.mlruns / "artifacts"),
            "--host", s.host, "--port", str(s.mlflow_port), "--workers", "1",
            *(["--allowed-hosts", os.environ["FEDFLOW_MLFLOW_ALLOWED_HOSTS"]]
              if os.environ.get("FEDFLOW_MLFLOW_ALLOWED_HOSTS") else []),
        ], s.mlflow_port, env={"MLFLOW_BACKEND_STORE_URI": database_url(s, "mlflow")}),
        servers.Component("api-server", [airflow, "api-server", "-H", s.host, "-p", str(s.airflow_port), "-w", "1"],
                          s.airflow_port),
        servers.Component("scheduler", [airflow, "scheduler", "--skip-serve-logs"]),
        servers.Component("dag-processor", [airflow, "dag-processor"]),
        servers.Component("triggerer", [airflow, "triggerer", "--skip-serve-logs"]),
        # The gpu worker (and the trainers it starts) sees one GPU, FEDFLOW_GPU_DEVICE (default 0); the
        # default worker none: staging and evaluation must not take GPU memory from the training chunks.
        worker("default", DEFAULT_WORKER_CONCURRENCY, ""),
        worker("gpu", s.gpu_concurrency, os.environ.get("FEDFLOW_GPU_DEVICE", "0")),
    ]


def check(s: servers.Settings) -> None:
    """Before anything starts: the programs exist, the ports are distinct and free."""
    postgres_bin("initdb")
    redis_bin()
    _check_packages(s)
    if s.gpu_concurrency < 1:
        raise servers.Error(f"--gpu-concurrency must be at least 1 (got {s.gpu_concurrency}).")
    ports = {"Airflow": s.airflow_port, "MLflow": s.mlflow_port, "PostgreSQL": s.postgres_port,
             "Redis": s.redis_port}
    if len(set(ports.values())) != len(ports):
        raise servers.PortInUseError(f"The ports must differ: {ports}. Fix: set FEDFLOW_POSTGRES_PORT, "
                                     "FEDFLOW_REDIS_PORT, FEDFLOW_AIRFLOW_PORT or FEDFLOW_MLFLOW_PORT.")
    servers.check_port_free("127.0.0.1", s.postgres_port, "PostgreSQL",
                            "FEDFLOW_POSTGRES_PORT (make up-celery POSTGRES_PORT=...)")
    servers.check_port_free("127.0.0.1", s.redis_port, "Redis", "FEDFLOW_REDIS_PORT (make up-celery REDIS_PORT=...)")


def _check_packages(s: servers.Settings) -> None:
    """What the Celery topology imports and `up` (local) does not: fail now, naming it, not with a worker's
    traceback later (~4 s: one Airflow import)."""
    venv_python = paths.PROJECT_ROOT / ".venv" / "bin" / "python"
    s.log_dir.mkdir(parents=True, exist_ok=True)
    log = s.log_dir / "check-packages.log"
    probe = ("import asyncpg, psycopg2\n"  # Airflow 3.3 derives an asyncpg URL from a postgresql:// metadata DB
             "import airflow.providers.celery.executors.celery_executor_utils\n")
    with open(log, "w") as f:
        done = subprocess.run([str(venv_python), "-c", probe], env=servers.airflow_env(s), stdin=subprocess.DEVNULL,
                              stdout=f, stderr=subprocess.STDOUT, cwd=paths.PROJECT_ROOT, timeout=300)
    if done.returncode != 0:
        raise servers.StartError(
            f"{venv_python} cannot run Airflow's CeleryExecutor on PostgreSQL: {servers._tail(log, 1)} "
            "(it needs asyncpg and psycopg2, and a Celery that apache-airflow-providers-celery supports: "
            "3.26 imports celery.backends.database.retry, which Celery 5.7 removed). "
            "Fix: in requirements/airflow.in, add asyncpg and pin celery<5.7, then `make lock envs`.")


def start_services(s: servers.Settings, start: Callable[[servers.Component, dict[str, str]], dict]) -> None:
    """Starts PostgreSQL (a new cluster on first use, then the users and databases) and Redis through
    ``start`` (which records them), and waits until both answer."""
    base, sock = postgres_dir(s.airflow_home), _socket_dir(s.airflow_home)
    as_postgres = os.geteuid() == 0
    _make_private_dir(base, as_postgres)
    _make_private_dir(sock, as_postgres)
    if not (base / "data" / "PG_VERSION").exists():
        _initdb(s, base)
    record = start(servers.Component(
        "postgres",
        [postgres_bin("postgres"), "-D", str(base / "data"), "-p", str(s.postgres_port), "-k", str(sock),
         "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
        s.postgres_port, user=POSTGRES_USER if as_postgres else None, cwd=base,
        stop_signal="SIGINT", stop_last=True,  # SIGTERM would wait for every client to disconnect
    ), _service_env(base))
    _wait_until(record, lambda: _pg_isready(s), "PostgreSQL")
    _create_databases(s)

    redis_dir = s.airflow_home / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    config = s.airflow_home / "redis.conf"  # the password: a private file, not the command line
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"bind 127.0.0.1\nport {s.redis_port}\nrequirepass {_password(s, 'redis')}\n"
                f"save \"\"\nappendonly no\ndaemonize no\nlogfile \"\"\ndir {redis_dir}\n")
    record = start(servers.Component("redis", [redis_bin(), str(config)], s.redis_port, cwd=redis_dir,
                                     stop_last=True), _service_env(redis_dir))
    _wait_until(record, lambda: _redis_ping(s), "Redis")


def initialise_airflow_db(s: servers.Settings, env: dict[str, str]) -> None:
    """Migrates the Airflow database and creates the `gpu` pool, once (before the components race to)."""
    marker = s.airflow_home / ".fedflow-initialised"
    fresh = not marker.exists()
    if _psql(s, "airflow", "SELECT count(*) FROM slot_pool WHERE pool = 'gpu'", check=False) != "1":
        airflow = str(paths.PROJECT_ROOT / "scripts" / "airflow")
        # scripts/airflow migrates and creates the pool itself on a fresh AIRFLOW_HOME (no marker yet).
        steps = [[airflow, "version"]] if fresh else [
            [airflow, "db", "migrate"],
            [airflow, "pools", "set", "gpu", str(_gpu_count()), "one slot per GPU (training chunks)"],
        ]
        log = s.log_dir / "init.log"
        with open(log, "w") as f:
            for argv in steps:
                done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                      timeout=600, cwd=paths.PROJECT_ROOT)
                if done.returncode != 0:
                    raise servers.StartError(f"Initialising Airflow's PostgreSQL database failed. Last lines of "
                                             f"{log}:\n{servers._tail(log)}")
    if fresh:  # scripts/airflow's marker now stands for the Postgres database: `up` (local) must still migrate
        marker.touch()
        (s.airflow_home / servers.CELERY_ONLY_MARKER).touch()


def workers_not_ready(records: list[dict]) -> list[str]:
    """The Celery workers that have not yet logged "ready" (they take tasks from then on)."""
    waiting = []
    for r in records:
        if r["name"].startswith("worker-"):
            try:
                text = Path(r["log"]).read_text(errors="replace")
            except OSError:
                text = ""
            if " ready." not in text:
                waiting.append(r["name"])
    return waiting


def summary(s: servers.Settings) -> str:
    """Lines for `up`'s message."""
    return (f"  Postgres 127.0.0.1:{s.postgres_port}   databases airflow, mlflow; cluster in "
            f"{postgres_dir(s.airflow_home)}\n"
            f"  Redis    127.0.0.1:{s.redis_port}   Celery broker\n"
            f"  workers  worker-default (queue default, concurrency {DEFAULT_WORKER_CONCURRENCY}), "
            f"worker-gpu (queue gpu, concurrency {s.gpu_concurrency})\n")


# --- internals -------------------------------------------------------------------------------------


def _gpu_count() -> int:
    """One `gpu` pool slot per GPU, at least one (as scripts/airflow does)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(line.startswith("GPU") for line in out.splitlines()))


def _superuser() -> str:
    return POSTGRES_USER if os.geteuid() == 0 else getpass.getuser()


def _as_postgres() -> dict:
    """subprocess arguments that run a PostgreSQL program as its user (root: `postgres`; else ourselves)."""
    return {"user": POSTGRES_USER, "group": POSTGRES_USER, "extra_groups": []} if os.geteuid() == 0 else {}


def _service_env(home: Path) -> dict[str, str]:
    """A plain environment for PostgreSQL and Redis: none of the servers' secrets."""
    env = {k: v for k, v in os.environ.items()
           if k in ("PATH", "TZ", "LANG") or k.startswith("LC_")}
    return {**env, "HOME": str(home), "PATH": env.get("PATH", "/usr/bin:/bin")}


def _make_private_dir(path: Path, for_postgres: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if for_postgres:
        for p in (path, *(q for q in path.parents if str(q).startswith("/var/lib/postgresql/"))):
            shutil.chown(p, POSTGRES_USER, POSTGRES_USER)
            p.chmod(0o700)
    else:
        path.chmod(0o700)


def _initdb(s: servers.Settings, base: Path) -> None:
    (base / "airflow_home").write_text(f"{s.airflow_home}\n")  # whose cluster this is, for people
    log = s.log_dir / "postgres-initdb.log"
    with open(log, "w") as f:
        done = subprocess.run(
            [postgres_bin("initdb"), "-D", str(base / "data"), "-U", _superuser(), "-E", "UTF8", "--no-locale",
             "--auth-local=peer", "--auth-host=scram-sha-256"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=base, env=_service_env(base),
            timeout=300, **_as_postgres())
    if done.returncode != 0:
        raise servers.StartError(f"initdb failed for {base / 'data'}. Last lines of {log}:\n{servers._tail(log)}")


def _psql(s: servers.Settings, db: str, sql: str, *, check: bool = True) -> str:
    """Runs ``sql`` (on stdin: passwords stay off the command line) as the superuser over the private
    socket; returns its unaligned output."""
    base = postgres_dir(s.airflow_home)
    done = subprocess.run(
        [postgres_bin("psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(_socket_dir(s.airflow_home)),
         "-p", str(s.postgres_port), "-U", _superuser(), "-d", db],
        input=sql, capture_output=True, text=True, cwd=base, env=_service_env(base), timeout=120, **_as_postgres())
    if check and done.returncode != 0:
        raise servers.StartError(f"psql on database {db} failed: {done.stderr.strip()}")
    return done.stdout.strip() if done.returncode == 0 else ""


def _create_databases(s: servers.Settings) -> None:
    """The users and databases ``airflow`` and ``mlflow`` (each owns its database), with the passwords
    kept in AIRFLOW_HOME (set again on every start, so they always match)."""
    statements = []
    for db in DATABASES:
        statements += [
            f"SELECT 'CREATE ROLE {db} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{db}')\\gexec",
            f"ALTER ROLE {db} LOGIN PASSWORD '{_password(s, f'postgres_{db}')}';",
            f"SELECT 'CREATE DATABASE {db} OWNER {db}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{db}')\\gexec",
        ]
    _psql(s, "postgres", "\n".join(statements) + "\n")


def _pg_isready(s: servers.Settings) -> bool:
    done = subprocess.run([postgres_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(s.postgres_port)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return done.returncode == 0


def _redis_ping(s: servers.Settings) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", s.redis_port), timeout=2) as sock:
            password = _password(s, "redis").encode()
            sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(password), password))
            answer = b""
            while b"PONG" not in answer and len(answer) < 200:
                chunk = sock.recv(200)
                if not chunk:
                    break
                answer += chunk
            return b"+OK\r\n+PONG" in answer
    except OSError:
        return False


def _wait_until(record: dict, ready: Callable[[], bool], what: str, timeout_s: float = SERVICE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if servers._leader(record) is None:
            raise servers.StartError(f"{what} exited while starting. Last lines of {record['log']}:\n"
                                     f"{servers._tail(Path(record['log']))}")
        if time.monotonic() > deadline:
            raise servers.StartError(f"{what} did not answer within {timeout_s:.0f} s. Last lines of "
                                     f"{record['log']}:\n{servers._tail(Path(record['log']))}")
        time.sleep(0.2)
