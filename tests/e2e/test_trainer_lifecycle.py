"""No TFF worker_binary survives a chunk that fails or is stopped by Airflow's timeout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import launch, steps
from tasks.paths import RunPaths
from tests.conftest import worker_binaries
from tests.e2e.conftest import prepared_run

pytestmark = pytest.mark.slow


def test_a_failing_chunk_raises_with_the_trainer_error_and_leaves_no_worker(fedflow_env, monkeypatch,
                                                                             no_leaked_workers):
    handle = prepared_run("failing")
    monkeypatch.setenv("FEDFLOW_FAULT", "fail_after_round=1")
    with pytest.raises(launch.TrainerFailedError, match="Injected fault after round 1"):
        steps.train_chunk(handle, 0)


def test_airflow_timeout_mid_chunk_kills_the_trainer_and_its_worker(fedflow_env, monkeypatch, no_leaked_workers):
    class AirflowTaskTimeoutStandIn(BaseException):
        """Airflow's execution_timeout raises an exception in the task's frame, like this one."""

    run = RunPaths(Path(prepared_run("timed-out")["run_dir"]))
    before = worker_binaries()
    seen: set[int] = set()

    def time_out_once_training():
        seen.update(worker_binaries() - before)
        if seen and run.metrics.exists():
            raise AirflowTaskTimeoutStandIn

    monkeypatch.setenv("FEDFLOW_FAULT", "hang_after_round=1")
    with pytest.raises(AirflowTaskTimeoutStandIn):
        launch.run_trainer(["train", "--run-dir", str(run.root), "--until-round", "2"],
                           log_path=run.chunk_log(0), timeout_s=600, on_poll=time_out_once_training,
                           poll_seconds=0.5)
    assert seen, "the trainer never started a worker_binary, so this test proved nothing"
