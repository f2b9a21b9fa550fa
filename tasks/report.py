"""Prints the summary of the newest finished run: ``python -m tasks.report [--run-dir D]``, or with
``--validation`` the newest data validation summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tasks import atomic, paths


def newest_summary() -> Path | None:
    found = sorted(paths.runs_root().glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def newest_validation() -> Path | None:
    found = sorted(paths.runs_root().glob("*/validation_summary.txt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def render(summary: dict, seconds: int | None = None) -> str:
    took = f" in {seconds // 60} min {seconds % 60} s" if seconds is not None else ""
    return "\n".join(
        [
            "",
            f"fedflow: {summary['rounds']} rounds of {summary.get('algorithm', 'federated averaging')} finished{took}.",
            f"  final {summary.get('test_accuracy_label', 'test accuracy')}  {summary['final_test_accuracy']:.4f}   "
            f"({summary.get('test_loss_label', 'test loss')} {summary['final_test_loss']:.4f})",
            f"  MLflow run           {summary['mlflow_run_id']}  (experiment {summary['experiment']!r})",
            f"  tracking URI         {summary['tracking_uri']}",
            f"  registered model     {summary['registered_model_name']} version {summary['version']}"
            f"  ->  {summary['model_uri']}",
            f"  run directory        {summary['run_dir']}",
            "",
            "Look at it:",
            "  make mlflow-ui    # MLflow on http://127.0.0.1:5000 (runs, per-round metrics, the model)",
            "  make airflow-ui   # Airflow on http://127.0.0.1:8080 (the DAG run, task logs)",
            "",
        ]
    )


def print_sweep(dag_id: str, seconds: int | None = None) -> int:
    found = sorted(paths.runs_root().glob(f"{dag_id}__*/comparison/comparison.md"), key=lambda p: p.stat().st_mtime)
    if not found:
        print(f"No finished run of {dag_id} under {paths.runs_root()}.", file=sys.stderr)
        return 1
    root = found[-1].parent.parent
    took = f" in {seconds // 60} min {seconds % 60} s" if seconds is not None else ""
    print(f"\nfedflow: sweep {dag_id} finished{took}; run directory {root}\n\nComparison:")
    print(found[-1].read_text())
    reference = root / "reference" / "reference_check.md"
    if reference.exists():
        print("Reference check (the tutorial's claims; also on the sweep's parent MLflow run under reference/):")
        print(reference.read_text())
    return 0


ANALYTICS_DAG = "federated_analytics"


def print_analytics(dag_id: str, seconds: int | None = None) -> int:
    """The newest finished run of the analytics DAG: its headline, released words and reference check."""
    found = sorted(paths.runs_root().glob(f"{dag_id}__*/analytics_summary.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        print(f"No finished run of {dag_id} under {paths.runs_root()}.", file=sys.stderr)
        return 1
    summary, root = atomic.read_json(found[-1]), found[-1].parent
    took = f" in {seconds // 60} min {seconds % 60} s" if seconds is not None else ""
    print(f"\nfedflow: {dag_id} finished{took}.\n  {summary['headline']}\n  MLflow run           "
          f"{summary['mlflow_run_id']}  (experiment {summary['experiment']!r})\n  run directory        {root}\n")
    for name, heading in (("heavy_hitters", "Released heavy hitters"), ("dp_heavy_hitters", "With central DP")):
        table = root / "heavy_hitters" / f"{name}.md"
        if table.exists():
            print(f"{heading} (MLflow: heavy_hitters/{name}.md):\n{table.read_text()}")
    reference = root / "reference" / "reference_check.md"
    if reference.exists():
        print("Reference check (the tutorial's claims; also in MLflow under reference/):")
        print(reference.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path)
    parser.add_argument("--seconds", type=int, help="wall time to report")
    parser.add_argument("--validation", action="store_true", help="the newest validation summary instead")
    parser.add_argument("--sweep", metavar="DAG_ID", help="the newest run of this sweep DAG: comparison and checks "
                        f"(of {ANALYTICS_DAG}: its heavy hitters and checks)")
    args = parser.parse_args(argv)
    if args.sweep == ANALYTICS_DAG:  # `make run` passes every DAG but federated_training as --sweep
        return print_analytics(args.sweep, args.seconds)
    if args.sweep:
        return print_sweep(args.sweep, args.seconds)
    if args.validation:
        found = newest_validation()
        if found is None:
            print(f"No validation report under {paths.runs_root()}. Fix: run `make stage`.", file=sys.stderr)
            return 1
        print(found.read_text())
        print(f"Full report: {found.parent / 'validation.json'}; Data Docs: {found.parent / 'data_docs'}")
        return 0
    path = args.run_dir / "summary.json" if args.run_dir else newest_summary()
    if path is None or not path.exists():
        print(f"No finished run under {paths.runs_root()}. Fix: run `make demo`.", file=sys.stderr)
        return 1
    print(render(atomic.read_json(path), args.seconds))
    reference = path.parent / "reference" / "reference_check.md"
    if reference.exists():  # a recipe run: the tutorial's claims against this run
        print("Reference check (the tutorial's claims; also in MLflow under reference/):")
        print(reference.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
