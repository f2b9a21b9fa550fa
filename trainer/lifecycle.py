"""The trainer process's own clean-up: TFF's ``worker_binary`` must never outlive it.

TFF starts ``worker_binary`` as a child and stops it only in a ``__del__`` that does not run at exit.
:func:`install` makes every exit path (return, exception, SIGTERM) terminate all descendants. The
launcher on the Airflow side also kills the whole process group; this is the inner half of that pair.

``FEDFLOW_FAULT`` (``fail_after_round=N``, ``hang_after_round=N`` or ``pause_after_round=N``) injects a
fault after round N: the tests use it to prove the clean-up on failure and timeout paths, and to hold
the trainer mid-run while they break something around it (``pause`` waits until the file named by
``FEDFLOW_FAULT_RESUME_FILE`` exists, at most 10 minutes), which cannot be caused otherwise.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time

import psutil

log = logging.getLogger(__name__)


def reap_children(timeout: float = 5.0) -> None:
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    log.warning("Received SIGTERM; stopping")
    sys.exit(128 + signum)  # runs atexit handlers, and so reap_children


def install() -> None:
    atexit.register(reap_children)
    signal.signal(signal.SIGTERM, _on_sigterm)
    restore_sigint()


def restore_sigint() -> None:
    """Gives SIGINT back its default meaning when this process inherited it ignored (as every command started
    with ``&`` from a non-interactive shell does). TFF ends a worker_binary with SIGINT when its execution
    context is replaced, and waits for it: a worker that inherited SIGINT ignored never exits, and the wait
    hangs. The handler installed here is reset to the default in each child at exec, unlike "ignored"."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def maybe_inject_fault(round_num: int) -> None:
    spec = os.environ.get("FEDFLOW_FAULT", "")
    if not spec:
        return
    kind, _, at = spec.partition("=")
    if int(at) != round_num:
        return
    if kind == "fail_after_round":
        raise RuntimeError(f"Injected fault after round {round_num} (FEDFLOW_FAULT={spec})")
    if kind == "hang_after_round":
        log.warning("Injected hang after round %d (FEDFLOW_FAULT=%s)", round_num, spec)
        while True:
            time.sleep(60)
    if kind == "pause_after_round":
        resume = os.environ.get("FEDFLOW_FAULT_RESUME_FILE", "")
        log.warning("Injected pause after round %d until %s exists (FEDFLOW_FAULT=%s)", round_num, resume, spec)
        deadline = time.monotonic() + 600
        while resume and not os.path.exists(resume) and time.monotonic() < deadline:
            time.sleep(0.2)
        return
    raise ValueError(
        f"FEDFLOW_FAULT must be fail_after_round=N, hang_after_round=N or pause_after_round=N. Got {spec!r}."
    )
