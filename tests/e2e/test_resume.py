"""A run killed mid-chunk and retried ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tasks import launch, metrics_log, steps, tracking
from tasks.checkpoints import CheckpointStore
from tasks.paths import RunPaths
from tests.conftest import live_processes
from tests.e2e.conftest import SMALL, prepared_run

pytestmark = pytest.mark.slow


def wait_for_round(run: RunPaths, round_num: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["round"] == round_num for r in metrics_log.read_rows(run.metrics)):
        assert time.monotonic() < deadline, f"round {round_num} never appeared in {run.metrics}"
        time.sleep(0.2)


def test_a_chunk_killed_with_sigkill_and_retried_ends_with_the_uninterrupted_weights(
    fedflow_env, monkeypatch, no_leaked_workers
):
    # Reference: all rounds in one trainer process, never interrupted.
    reference = RunPaths(Path(prepared_run("reference")["run_dir"]))
    launch.run_trainer(["train", "--run-dir", str(reference.root), "--until-round", str(SMALL["rounds"])],
                       log_path=reference.chunk_log(0), timeout_s=900)

    handle = prepared_run("interrupted")
    run = RunPaths(Path(handle["run_dir"]))
    assert steps.train_chunk(handle, 0)["status"] == "trained"

    # Chunk 1 (rounds 3-4) hangs after round 3; then its whole process group gets SIGKILL,
    # as when a worker machine dies. The task sees a failed trainer.
    monkeypatch.setenv("FEDFLOW_FAULT", "hang_after_round=3")
    outcome: dict = {}
    attempt = threading.Thread(target=lambda: _capture(outcome, steps.train_chunk, handle, 1))
    attempt.start()
    wait_for_round(run, 3)
    [trainer_pid] = live_processes(f"--run-dir {run.root} ")
    os.killpg(trainer_pid, signal.SIGKILL)
    attempt.join(timeout=120)
    assert isinstance(outcome.get("error"), launch.TrainerFailedError), outcome
    monkeypatch.delenv("FEDFLOW_FAULT")

    # The newest checkpoint (round 3) is damaged too: the retry must fall back to round 2.
    newest = run.checkpoints / "round_000003.npz"
    newest.write_bytes(newest.read_bytes()[:-100])

    assert steps.train_chunk(handle, 1)["status"] == "trained"  # the Airflow retry
    assert "Resuming from round 2" in run.chunk_log(1).read_text()
    assert steps.train_chunk(handle, 2)["status"] == "trained"
    assert steps.train_chunk(handle, 3)["status"] == "not-needed"
    assert steps.train_chunk(handle, 2)["status"] == "done"  # idempotent

    final = CheckpointStore(run.checkpoints).load_latest()
    expected = CheckpointStore(reference.checkpoints).load_latest()
    assert final.round_num == expected.round_num == SMALL["rounds"]
    for got, want in zip(final.leaves, expected.leaves, strict=True):
        np.testing.assert_array_equal(got, want)

    rounds = [r["round"] for r in metrics_log.read_rows(run.metrics)]
    assert rounds == list(range(1, SMALL["rounds"] + 1))
    history = tracking.client().get_metric_history(tracking.run_id(run), "train_loss")
    assert sorted(m.step for m in history) == list(range(1, SMALL["rounds"] + 1))


def _capture(outcome: dict, fn, *args) -> None:
    try:
        outcome["result"] = fn(*args)
    except Exception as e:  # noqa: BLE001 - the test inspects it
        outcome["error"] = e
