"""The worker_binary leak check counts only processes started from this test session, so two sessions
(or a trainer beside the tests) on one machine never fail each other's checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from tests.conftest import worker_binaries


def _start_fake_worker(tmp_path, token: str) -> subprocess.Popen:
    binary = tmp_path / "data" / "worker_binary"
    if not binary.exists():
        binary.parent.mkdir()
        shutil.copy(shutil.which("sleep"), binary)
    return subprocess.Popen([str(binary), "30"], env={**os.environ, "FEDFLOW_TEST_SESSION": token})


def test_counts_this_sessions_worker_and_ignores_another_sessions(tmp_path):
    ours = _start_fake_worker(tmp_path, os.environ["FEDFLOW_TEST_SESSION"])
    theirs = _start_fake_worker(tmp_path, "another-session")
    try:
        time.sleep(0.2)
        found = worker_binaries()
        assert ours.pid in found
        assert theirs.pid not in found
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
    assert ours.pid not in worker_binaries()
