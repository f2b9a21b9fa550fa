"""Per-round curves of a sweep's points on one figure: train loss and test accuracy by round, one line per
point, as the TFF tutorials plot their comparisons (optimizers, noise multipliers). Drawn by the sweep's
``compare`` step from each point's ``metrics.jsonl``; matplotlib is imported by the function that draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks import metrics_log
from tasks.paths import RunPaths

CURVES_FILE = "curves_by_round.png"
# (metrics.jsonl key, axis label) of the two panels.
PANELS = (("train_loss", "train loss"), ("test_accuracy", "test accuracy"))


def point_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each panel's (round, value) pairs from one run's metrics rows (finite values only)."""
    return {
        key: [(int(r["round"]), float(r[key])) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
        for key, _ in PANELS
    }


def render_round_curves(
    points: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]], *, dag_id: str, out_dir: Path, title: str
) -> list[Path]:
    """``curves_by_round.png`` over the succeeded points (``rows``: the comparison's rows, by point order);
    nothing when no succeeded point has a metric row. Returns the paths written."""
    succeeded = {r["point"] for r in rows if r["status"] == "succeeded"}
    curves = {}
    for point in points:
        name = f"p{point['index']:02d}"
        metrics = RunPaths.for_run(dag_id, point["run_id"]).metrics
        if name in succeeded and metrics.exists():
            curves[f"{name} {point['label']}"] = point_curves(metrics_log.read_rows(metrics))
    if not any(series for c in curves.values() for series in c.values()):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(11.0, 4.4), dpi=100)
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for i, (name, series) in enumerate(curves.items()):
            if series[key]:
                ax.plot(
                    *zip(*series[key], strict=True),
                    marker="." if key == "train_loss" else "o",
                    color=f"C{i % 10}",
                    label=name,
                )
        values = [v for series in curves.values() for _, v in series[key]]
        if values and min(values) > 0 and max(values) / min(values) > 20:  # a diverging point (e.g. large DP noise)
            ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: train loss and test accuracy by round", fontsize=10)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / CURVES_FILE)
    plt.close(fig)
    return [out_dir / CURVES_FILE]
