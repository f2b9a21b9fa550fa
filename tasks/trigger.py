"""Triggers a DAG run through Airflow's REST API with a JSON conf, and optionally waits for it.

    python -m tasks.trigger federated_training --conf '{"rounds": 10}' --wait
    make trigger DAG=federated_training CONF='{"rounds": 10}'

Needs running servers (``make up``). The address defaults to the api-server that ``make up`` recorded
in ``$AIRFLOW_HOME/servers.json`` (else ``FEDFLOW_AIRFLOW_URL`` or http://127.0.0.1:8080); the password
of ``admin`` to the api-server's generated password file. Exit status: 0 the run succeeded (or was
triggered, without ``--wait``); 1 it failed (the failed tasks and their errors are printed); 2 Airflow
refused the request (a param outside its schema: Airflow's message names it) or the arguments are
wrong; 3 still running at ``--timeout``; 4 Airflow did not answer or refused the login.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks import airflow_api, servers

RESULT_TASK = "evaluate_and_register"
EXIT_FAILED, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_UNREACHABLE = 1, 2, 3, 4


def default_url() -> str:
    """The recorded api-server of ``make up``, else FEDFLOW_AIRFLOW_URL, else port FEDFLOW_AIRFLOW_PORT/8080."""
    for record in servers.status():
        if record["name"] == "api-server" and record.get("port"):
            return f"http://127.0.0.1:{record['port']}"
    if os.environ.get("FEDFLOW_AIRFLOW_URL"):
        return os.environ["FEDFLOW_AIRFLOW_URL"]
    return f"http://127.0.0.1:{os.environ.get('FEDFLOW_AIRFLOW_PORT') or servers.DEFAULT_AIRFLOW_PORT}"


def load_conf(conf: str | None, conf_file: str | None) -> dict[str, Any]:
    """The run's conf: the file's object, updated by ``--conf``'s object. Raises ValueError."""
    merged: dict[str, Any] = {}
    sources = []
    if conf_file:
        try:
            sources.append((conf_file, Path(conf_file).read_text()))
        except OSError as e:
            raise ValueError(f"cannot read --conf-file {conf_file}: {e.strerror}") from e
    sources.append(("--conf", conf))
    for source, text in sources:
        if not text or not text.strip():
            continue
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{source} is not valid JSON ({e}). Got: {text[:200]}") from e
        if not isinstance(value, dict):
            raise ValueError(f"{source} must be a JSON object. Got: {text[:200]}")
        merged.update(value)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.trigger", description=__doc__.split("\n\n")[0])
    parser.add_argument("dag_id")
    parser.add_argument("--conf", help="the run's params as a JSON object (overrides --conf-file's keys)")
    parser.add_argument("--conf-file", help="a JSON file holding the run's params")
    parser.add_argument("--wait", action="store_true", help="wait for the run to finish; exit 1 if it fails")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait with --wait (default 3600)")
    parser.add_argument("--poll", type=float, default=3.0, help="seconds between status checks")
    parser.add_argument("--url", help="Airflow's address (default: the api-server `make up` started)")
    parser.add_argument("--user", default=servers.ADMIN_USER)
    parser.add_argument("--password", help="default: FEDFLOW_AIRFLOW_PASSWORD or the generated password file")
    parser.add_argument("--note", help="a note shown on the run in the UI")
    args = parser.parse_args(argv)

    try:
        conf = load_conf(args.conf, args.conf_file)
    except ValueError as e:
        print(f"trigger: {e}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        password = args.password or airflow_api.default_password(args.user)
        api = airflow_api.Client(args.url or default_url(), args.user, password)
        dag = api.wait_for_dag(args.dag_id)
        if dag.get("is_paused"):
            api.unpause(args.dag_id)  # as the UI's trigger button does; a paused DAG's runs stay queued
            print(f"Unpaused {args.dag_id}.")
        run = api.trigger(args.dag_id, conf, note=args.note)
    except airflow_api.ApiError as e:
        if e.status in (400, 422):
            print(f"Airflow refused the run of {args.dag_id} (HTTP {e.status}): {airflow_api.describe_detail(e.detail)}",
                  file=sys.stderr)
            return EXIT_REFUSED
        if e.status in (401, 403):
            print(f"Airflow refused the login of {args.user!r}: {e}. Fix: check --user/--password.", file=sys.stderr)
            return EXIT_UNREACHABLE
        print(f"trigger: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except airflow_api.ConnectionFailedError as e:
        print(f"trigger: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except airflow_api.Error as e:
        print(f"trigger: {e}", file=sys.stderr)
        return EXIT_REFUSED

    run_id = run["dag_run_id"]
    print(f"Triggered {args.dag_id} run {run_id} ({run['state']}): {api.run_url(args.dag_id, run_id)}", flush=True)
    if not args.wait:
        return 0
    try:
        run = api.wait(args.dag_id, run_id, timeout_s=args.timeout, poll_s=args.poll, on_task=_print_task)
        return _report(api, args.dag_id, run)
    except airflow_api.TimedOutError as e:
        print(f"trigger: {e} See {api.run_url(args.dag_id, run_id)}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (airflow_api.ApiError, airflow_api.ConnectionFailedError) as e:
        print(f"trigger: lost Airflow while waiting: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _print_task(ti: dict) -> None:
    if ti["state"] in ("running", "success", "failed", "skipped", "upstream_failed", "up_for_retry"):
        print(f"  {ti['task_id']:<24} {ti['state']}" + (f" (try {ti['try_number']})" if ti.get("try_number", 1) > 1 else ""),
              flush=True)


def _report(api: airflow_api.Client, dag_id: str, run: dict) -> int:
    run_id = run["dag_run_id"]
    tis = api.task_instances(dag_id, run_id)
    if run["state"] == "success":
        print(f"Run {run_id} succeeded.")
        if any(ti["task_id"] == RESULT_TASK for ti in tis):
            print(json.dumps(api.xcom(dag_id, run_id, RESULT_TASK), indent=2, sort_keys=True))
        return 0
    failed = [ti for ti in tis if ti.get("state") in airflow_api.FAILED_TASK_STATES]
    print(f"Run {run_id} failed. Failed tasks: {', '.join(ti['task_id'] for ti in failed if ti['state'] == 'failed') or 'none'}"
          f" (upstream_failed: {sum(ti['state'] == 'upstream_failed' for ti in failed)}).", file=sys.stderr)
    for ti in failed:
        if ti["state"] == "failed":
            error = api.task_error(dag_id, run_id, ti["task_id"], ti["try_number"])
            print(f"  {ti['task_id']} (try {ti['try_number']}): {error or 'see its log in the UI'}", file=sys.stderr)
    print(f"  {api.run_url(dag_id, run_id)}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
