"""Every place fedflow reads or writes, in one module. Always absolute: the CWD moves under Airflow.

Overrides (for tests and deployments): ``FEDFLOW_DATA_DIR`` (staged data and run directories),
``FEDFLOW_MLRUNS_DIR`` (the embedded MLflow store), ``MLFLOW_TRACKING_URI`` (an MLflow server),
``FEDFLOW_TFF_PYTHON`` (the interpreter of the TensorFlow Federated environment).

Standard library only: the trainer imports it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("FEDFLOW_DATA_DIR", PROJECT_ROOT / "data")).resolve()


def staged_root() -> Path:
    return data_dir() / "staged"


def runs_root() -> Path:
    return data_dir() / "runs"


def mlruns_dir() -> Path:
    return Path(os.environ.get("FEDFLOW_MLRUNS_DIR", PROJECT_ROOT / "mlruns")).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set (a server), else the embedded sqlite store under mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def mlflow_ui_url() -> str:
    """Where people open the MLflow UI (``make mlflow-ui`` serves it here by default)."""
    return os.environ.get("FEDFLOW_MLFLOW_UI", "http://127.0.0.1:5000")


def artifact_root() -> str:
    return (mlruns_dir() / "artifacts").as_uri()


def tff_python() -> Path:
    return Path(os.environ.get("FEDFLOW_TFF_PYTHON", PROJECT_ROOT / ".venv-tff" / "bin" / "python"))


def safe_name(text: str) -> str:
    """A file-system-safe, collision-free rendering of an Airflow run id.

    Ids that are already safe are kept; others (``manual__2026-01-01T00:00:00+00:00``) get their
    unsafe characters replaced and a hash of the original appended, so two ids never share a run
    directory (and so never resume each other's checkpoints).
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip("._")[:150]
    if cleaned == text:
        return text
    return f"{cleaned or 'run'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """The files of one experiment run: ``<data>/runs/<dag id>__<run id>/``."""

    root: Path

    @classmethod
    def for_run(cls, dag_id: str, run_id: str) -> RunPaths:
        """Keyed by DAG and run: two DAGs scheduled at the same time get the same Airflow run id."""
        return cls(runs_root() / safe_name(f"{dag_id}__{run_id}"))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def staged(self) -> Path:
        """Pointer to the staged dataset this run trains on (written by the stage step)."""
        return self.root / "staged.json"

    @property
    def validation(self) -> Path:
        return self.root / "validation.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def chunk_log(self, chunk_index: int) -> Path:
        return self.logs / f"chunk_{chunk_index:02d}.log"

    @property
    def export_log(self) -> Path:
        return self.logs / "export.log"

    @property
    def model(self) -> Path:
        """The final model in MLflow's TensorFlow format (written by the trainer's export)."""
        return self.root / "model"

    @property
    def final(self) -> Path:
        return self.root / "final.json"

    @property
    def mlflow_run(self) -> Path:
        return self.root / "mlflow_run.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tff_env(self) -> Path:
        """Package versions and devices of the TFF environment that trained the run (lineage)."""
        return self.root / "tff_env.json"
