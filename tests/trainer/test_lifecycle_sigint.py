"""A trainer started with SIGINT ignored (any `cmd &` from a script) gives its children SIGINT back, so TFF can
end a worker_binary when it replaces the execution context instead of waiting for it forever."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

CHILD = textwrap.dedent("""
    import subprocess, sys
    from trainer import lifecycle
    {restore}
    grandchild = subprocess.run(["grep", "SigIgn", "/proc/self/status"], capture_output=True, text=True)
    print(grandchild.stdout.split()[1])
""")


def _grandchild_ignores_sigint(restore: bool) -> bool:
    code = CHILD.format(restore="lifecycle.restore_sigint()" if restore else "")
    # The shell ignores SIGINT and execs the child, as `cmd &` does. Not preexec_fn: Python code between fork and
    # exec in this many-threaded process (TensorFlow, JAX) can crash the forked child (seen: SIGSEGV).
    done = subprocess.run(["sh", "-c", 'trap "" INT; exec "$0" -c "$1"', sys.executable, code], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return bool(int(done.stdout.strip(), 16) & (1 << (signal.SIGINT - 1)))


def test_children_get_sigint_back_when_the_trainer_inherited_it_ignored():
    assert _grandchild_ignores_sigint(restore=False)  # the trap: "ignored" survives exec
    assert not _grandchild_ignores_sigint(restore=True)
