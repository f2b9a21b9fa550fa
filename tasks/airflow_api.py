"""A small client of Airflow 3's REST API (``/api/v2``): log in, trigger a DAG run with a conf, wait.

Standard library only (urllib). Authentication is the simple auth manager's: ``POST /auth/token`` with
the user's name and password returns a JWT sent as ``Authorization: Bearer``; the password of ``admin``
is in ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`` (written by the api-server).

    api = Client("http://127.0.0.1:8080", "admin", default_password("admin"))
    run = api.trigger("federated_training", {"rounds": 4})
    run = api.wait("federated_training", run["dag_run_id"], timeout_s=600)
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
FAILED_TASK_STATES = frozenset({"failed", "upstream_failed"})


class Error(Exception):
    """Base class of this client's errors."""


class ApiError(Error):
    """Airflow answered with an HTTP error; ``detail`` is Airflow's own message."""

    def __init__(self, method: str, url: str, status: int, detail: Any):
        self.method, self.url, self.status, self.detail = method, url, status, detail
        super().__init__(f"{method} {url} -> HTTP {status}: {describe_detail(detail)}")


class ConnectionFailedError(Error):
    """Airflow's api-server did not answer at all."""


class TimedOutError(Error):
    """The DAG run did not reach a terminal state in time."""


def password_file(home: Path | None = None) -> Path:
    home = home or Path(os.environ.get("AIRFLOW_HOME") or Path(__file__).resolve().parents[1] / ".airflow")
    return Path(home) / "simple_auth_manager_passwords.json.generated"


def default_password(user: str, home: Path | None = None) -> str:
    """``FEDFLOW_AIRFLOW_PASSWORD``, else ``user``'s entry in the api-server's generated password file."""
    if os.environ.get("FEDFLOW_AIRFLOW_PASSWORD"):
        return os.environ["FEDFLOW_AIRFLOW_PASSWORD"]
    path = password_file(home)
    try:
        passwords = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise Error(f"{path} does not exist: the api-server writes it when it first starts. "
                    "Fix: start the servers (`make up`), or pass --password / set FEDFLOW_AIRFLOW_PASSWORD.") from e
    if user not in passwords:
        raise Error(f"No password for user {user!r} in {path} (users: {sorted(passwords)}).")
    return passwords[user]


def describe_detail(detail: Any) -> str:
    """Airflow's error detail in one readable piece: a string's first paragraph (a param error is
    followed by the schema dump), or FastAPI's list of validation errors as ``field: message``."""
    if isinstance(detail, str):
        return detail.split("\n\n")[0].strip()
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                where = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                parts.append(f"{where}: {item.get('msg', item)}" if where else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, Mapping) and "detail" in detail:
        return describe_detail(detail["detail"])
    return json.dumps(detail) if not isinstance(detail, str) else detail


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


class Client:
    """Airflow's public REST API at ``base_url`` as ``username``; logs in on first use and again on a 401."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.username, self.password, self.timeout_s = username, password, timeout_s
        self._token: str | None = None

    # --- plumbing -------------------------------------------------------------------------------

    def login(self) -> str:
        body = self._send("POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False)
        self._token = body["access_token"]
        return self._token

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        if query:
            path = f"{path}?{urllib.parse.urlencode(query, doseq=True)}"
        if self._token is None:
            self.login()
        try:
            return self._send(method, path, body)
        except ApiError as e:
            if e.status != 401:
                raise
            self.login()  # the token expired
            return self._send(method, path, body)

    def _send(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise ApiError(method, path, e.code, detail) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConnectionFailedError(f"Airflow at {self.base_url} does not answer ({reason}). "
                                        "Fix: start the servers with `make up`, or pass --url.") from None
        return json.loads(raw) if raw else None

    # --- DAGs and runs ----------------------------------------------------------------------------

    def dag(self, dag_id: str) -> dict:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id)}")

    def dag_ids(self) -> list[str]:
        return [d["dag_id"] for d in self.request("GET", "/api/v2/dags", query={"limit": 1000})["dags"]]

    def wait_for_dag(self, dag_id: str, timeout_s: float = 120.0) -> dict:
        """The DAG, once the dag-processor has parsed it. Freshly started servers have no DAGs for a few
        seconds; a name that is not among parsed DAGs fails at once, listing those that exist."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.dag(dag_id)
            except ApiError as e:
                if e.status != 404:
                    raise
                known = self.dag_ids()
                if known:
                    raise Error(f"Airflow has no DAG {dag_id!r}. DAGs: {', '.join(sorted(known))}.") from None
                if time.monotonic() > deadline:
                    raise Error(f"No DAG has been parsed after {timeout_s:.0f} s. "
                                "Fix: look at the dag-processor's log ($AIRFLOW_HOME/logs/servers/).") from None
            time.sleep(2)

    def unpause(self, dag_id: str) -> dict:
        return self.request("PATCH", f"/api/v2/dags/{quote(dag_id)}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any], *, note: str | None = None) -> dict:
        """Creates a manual run; raises ApiError with status 400 (Airflow's message names the param) when
        ``conf`` violates the DAG's params."""
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf)}
        if note:
            body["note"] = note
        return self.request("POST", f"/api/v2/dags/{quote(dag_id)}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances"
        return self.request("GET", path, query={"limit": 1000})["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/{quote(task_id)}/xcomEntries/{quote(key)}"
        return self.request("GET", path)["value"]

    def task_error(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str | None:
        """``ExcType: message`` of the exception that failed a try, from its structured log; None if none."""
        path = f"/api/v2/dags/{quote(dag_id)}/dagRuns/{quote(run_id)}/taskInstances/{quote(task_id)}/logs/{try_number}"
        try:
            content = self.request("GET", path, query={"full_content": "true"}).get("content") or []
        except ApiError:
            return None
        found = None
        for event in content if isinstance(content, list) else []:
            chain = (event.get("error_detail") or []) if isinstance(event, Mapping) else []
            if chain:  # the exception that failed the task comes first, its causes after it
                found = f"{chain[0].get('exc_type', 'Error')}: {chain[0].get('exc_value', '')}"
        return found

    def wait(self, dag_id: str, run_id: str, *, timeout_s: float = 3600.0, poll_s: float = 3.0,
             on_task: Callable[[dict], None] | None = None) -> dict:
        """Polls the run until it succeeds or fails; calls ``on_task`` once for each task instance that
        reaches a new state. Raises TimedOutError."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str | None] = {}
        while True:
            run = self.dag_run(dag_id, run_id)
            if on_task is not None:
                for ti in self.task_instances(dag_id, run_id):
                    key = f"{ti['task_id']}[{ti.get('map_index', -1)}]"
                    if ti.get("state") and seen.get(key) != ti["state"]:
                        seen[key] = ti["state"]
                        on_task(ti)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimedOutError(f"Run {run_id} of {dag_id} is still {run['state']} after {timeout_s:.0f} s.")
            time.sleep(poll_s)

    def run_url(self, dag_id: str, run_id: str) -> str:
        """The run's page in Airflow's UI."""
        return f"{self.base_url}/dags/{quote(dag_id)}/runs/{quote(run_id)}"
