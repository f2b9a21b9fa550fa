"""The processes of recorded components: which are still ours, and how to stop them and all they
started. A record holds the PID and start time of a component started in a session of its own
(``start_new_session``), so its process group id is its PID. Standard library and psutil only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

import psutil

GRACE_SECONDS = 12.0


def stop(records: list[dict]) -> tuple[list[str], list[str]]:
    """Stops the recorded components and everything they started; returns (names stopped, processes killed)."""
    procs: dict[int, psutil.Process] = {}
    leaders: list[tuple[psutil.Process, signal.Signals]] = []
    groups: list[int] = []
    stopped: list[str] = []
    for r in records:
        members = owned_processes(r)
        if members:
            stopped.append(r["name"])
            groups.append(r["pid"])
        if (leader := running_leader(r)) is not None:
            leaders.append((leader, signal.Signals[r.get("stop_signal") or "SIGTERM"]))
        for p in members:
            procs[p.pid] = p
    # 1. SIGTERM (PostgreSQL: SIGINT) to each component alone: it stops its own children in order (the
    #    LocalExecutor's workers, uvicorn's, Celery's pool). 2. SIGTERM to everything left (the scheduler waits for running tasks
    #    until signalled again; a task then stops its TFF trainer). 3. SIGKILL to whatever still runs.
    killed: list[str] = []
    for step, wait_s in (("leaders", GRACE_SECONDS), ("all", 5.0), ("kill", 5.0)):
        add_descendants(procs)
        if step == "leaders":
            targets = leaders
        else:
            targets = [(p, signal.SIGKILL if step == "kill" else signal.SIGTERM) for p in alive(procs.values())]
            if step == "kill":
                killed = [describe(p) for p, _ in targets]
            # a group that still has a member of ours cannot have been reused
            for pgid in set(groups) & pgids(p for p, _ in targets):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, targets[0][1])
        for p, sig in targets:  # psutil refuses a process whose start time changed (a reused PID)
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        # The first step waits for the components only: an orphan they leave goes on to step 2 at once.
        if (wait_gone([p for p, _ in leaders] if step == "leaders" else procs.values(), wait_s)
                and not alive(procs.values())):
            break
    return stopped, killed


def running_leader(record: dict) -> psutil.Process | None:
    """The recorded process if it still runs — the same PID *and* start time (a reused PID is not it)."""
    try:
        p = psutil.Process(record["pid"])
        if abs(p.create_time() - record["create_time"]) > 0.05 or p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def owned_processes(record: dict) -> list[psutil.Process]:
    """The recorded process and every live member of its process group.

    The group id is the recorded PID (start_new_session). Linux never hands out a PID that is still
    some group's id, so: leader alive with its start time -> the group is ours; PID free -> any member
    left is ours (an orphan); PID taken by another process -> our group is empty.
    """
    pid = record["pid"]
    leader = running_leader(record)
    if leader is None and psutil.pid_exists(pid):
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return []  # the PID now belongs to someone else
    members = [leader] if leader else []
    for p in psutil.process_iter():
        if p.pid == pid:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == pid and p.status() != psutil.STATUS_ZOMBIE:
                members.append(p)
    return members


def add_descendants(procs: dict[int, psutil.Process]) -> None:
    """Adds the live descendants of ``procs`` — also those in sessions of their own (a task's trainer)."""
    for p in list(procs.values()):
        with contextlib.suppress(psutil.Error):
            for child in p.children(recursive=True):
                procs.setdefault(child.pid, child)


def pgids(procs: Iterable[psutil.Process]) -> set[int]:
    found = set()
    for p in procs:
        with contextlib.suppress(OSError):
            found.add(os.getpgid(p.pid))
    return found


def alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} ({' '.join(p.cmdline())[:60] or p.name()})"
    except psutil.Error:
        return str(p.pid)


def wait_gone(procs: Iterable[psutil.Process], seconds: float) -> bool:
    procs = list(procs)
    deadline = time.monotonic() + seconds
    while alive(procs):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
