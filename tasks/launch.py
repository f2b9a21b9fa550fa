"""Launches the trainer in the TFF environment and owns its whole process group.

TFF's ``worker_binary`` inherits its parent's stdout/stderr and outlives Python; anything reading
those pipes to EOF hangs. So the trainer runs in a session of its own (``start_new_session``), writes
to a log file, reads /dev/null, and on every exit path — success, non-zero exit, our timeout,
Airflow's ``execution_timeout`` (an exception raised in this frame), SIGTERM from Airflow — the whole
process group is terminated, then killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

from tasks import paths

log = logging.getLogger(__name__)
GRACE_SECONDS = 10.0


class Error(Exception):
    """Base class for launch errors."""


class TrainerFailedError(Error):
    """The trainer process exited with a non-zero status."""


class TrainerTimeoutError(Error):
    """The trainer ran past its time limit and was killed."""


def trainer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run_trainer(
    args: Sequence[str],
    *,
    log_path: Path,
    timeout_s: float,
    on_poll: Callable[[], None] | None = None,
    poll_seconds: float = 2.0,
    module: str = "trainer",
) -> None:
    """Runs ``python -m trainer <args>`` (or another trainer ``module``) in the TFF env; returns when it succeeded.

    Its output is appended to ``log_path`` and forwarded line by line to this process's log.
    ``on_poll`` runs every ``poll_seconds`` while the trainer runs (metrics streaming); its errors are
    logged, not raised. Raises TrainerFailedError or TrainerTimeoutError; no process of the trainer's
    group survives this call, whatever happens.
    """
    python = paths.tff_python()
    if not python.exists():
        raise Error(f"The TFF environment's interpreter {python} does not exist. Fix: run `make envs`.")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [str(python), "-m", module, *args],
            stdin=devnull, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=paths.PROJECT_ROOT, env=trainer_env(),
        )
    log.info("Started trainer pid %d: %s (log %s)", proc.pid, " ".join(args), log_path)
    forward = _LogForwarder(log_path, start=log_path.stat().st_size if log_path.exists() else 0)
    try:
        with _terminate_group_on_sigterm(proc):
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    returncode = proc.wait(timeout=poll_seconds)
                    break
                except subprocess.TimeoutExpired:
                    pass
                forward.flush_new_lines()
                _poll_safely(on_poll)
                if time.monotonic() > deadline:
                    raise TrainerTimeoutError(
                        f"The trainer ran longer than {timeout_s:.0f} s and was killed with its process group. "
                        f"Fix: raise chunk_timeout_minutes or lower rounds_per_chunk. Log: {log_path}"
                    )
    finally:
        kill_process_group(proc)
        forward.flush_new_lines()
    if returncode != 0:
        raise TrainerFailedError(
            f"The trainer exited with status {returncode}. Last lines of {log_path}:\n{_tail(log_path)}"
        )


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the trainer's process group, SIGKILL after a grace period; reaps the trainer."""
    pgid = proc.pid  # start_new_session: the trainer leads its own group
    for sig, wait_s in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, GRACE_SECONDS)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _wait_group_gone(pgid, wait_s, proc):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GRACE_SECONDS)


def _wait_group_gone(pgid: int, seconds: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not linger as a zombie group member
        if not _live_group_members(pgid):
            return True
        time.sleep(0.1)
    return False


def _live_group_members(pgid: int) -> list[int]:
    """Members of the group that are not zombies (orphans wait for an init that may never reap them)."""
    alive = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


@contextlib.contextmanager
def _terminate_group_on_sigterm(proc: subprocess.Popen) -> Iterator[None]:
    """While the trainer runs, a SIGTERM to this process first kills the trainer's group."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        kill_process_group(proc)
        if callable(previous):
            previous(signum, frame)
        else:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _poll_safely(on_poll: Callable[[], None] | None) -> None:
    if on_poll is None:
        return
    try:
        on_poll()
    except Exception as e:  # noqa: BLE001 - streaming is best effort; the final sync raises
        log.warning("Streaming metrics failed (will retry): %s", e)


class _LogForwarder:
    """Forwards new complete lines of the trainer's log file to this process's log."""

    def __init__(self, path: Path, start: int) -> None:
        self.path, self.offset = path, start

    def flush_new_lines(self) -> None:
        with contextlib.suppress(OSError), open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for line in data[:end].decode(errors="replace").splitlines():
                log.info("trainer | %s", line)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"
