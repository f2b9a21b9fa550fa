"""The comparison of a sweep's grid points: tables (CSV, Markdown, HTML) and plots of test accuracy
vs ε and vs bits per parameter. Plain Python; matplotlib is imported by the function that draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks import tables

# Result columns of the comparison, from final.json and the last metrics.jsonl row that has each.
RESULT_COLUMNS = ("final_test_accuracy", "final_test_loss", "epsilon", "epsilon_pld", "delta", "bits_per_parameter",
                  "compression_ratio")
# Grid fields that move a point along the x axis of a plot (so they do not split it into lines).
_COMPRESSION_FIELDS = {"compress", "compression_bits", "compression_threshold"}
_NOISE_FIELDS = {"noise_multiplier", "dp_target_epsilon"}  # a calibrated point lies on the same ε axis


def point_label(grid_values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in grid_values.items())


def table_columns(grid_names: Sequence[str]) -> list[str]:
    return ["point", "status", *grid_names, *RESULT_COLUMNS, "champion", "registered_model_name", "version",
            "mlflow_run_id", "error"]


def write_tables(rows: Sequence[Mapping[str, Any]], grid_names: Sequence[str], out_dir: Path, *,
                 champion: Mapping[str, Any] | None) -> list[Path]:
    """``comparison.csv`` (raw values), ``comparison.md`` and ``comparison.html`` (rounded; the champion
    marked). Returns their paths."""
    records = [{**r, "champion": "yes" if champion is not None and r["point"] == champion["point"] else ""}
               for r in rows]
    return tables.write(records, table_columns(grid_names), out_dir, "comparison",
                        cell=lambda column, value: _cell(value, rounded=column in RESULT_COLUMNS),
                        highlight=lambda r: "champion" if r["champion"] else "")


def _cell(value: Any, *, rounded: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and rounded:
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)  # grid values as the file wrote them


def render_plots(rows: Sequence[Mapping[str, Any]], grid_names: Sequence[str], out_dir: Path, *, title: str,
                 champion: Mapping[str, Any] | None) -> list[Path]:
    """``accuracy_vs_epsilon.png`` (one line per setting of the other grid fields, e.g. per compression
    setting; points without noise, ε = ∞, as dashed horizontal lines) and ``accuracy_vs_bits.png``
    (bits per parameter; one line per setting of the non-compression fields, e.g. per noise multiplier).
    A plot is drawn when some succeeded point has its x value, except the bits plot of a sweep where no
    point compresses (every point sends 32 bits per parameter, e.g. the optimizers). Returns the paths written."""
    done = [r for r in rows if r["status"] == "succeeded"]
    specs = (("accuracy_vs_epsilon.png", "epsilon", "final ε at δ (RDP)", _NOISE_FIELDS),
             ("accuracy_vs_bits.png", "bits_per_parameter", "bits sent per parameter", _COMPRESSION_FIELDS))
    written = []
    for name, x_key, x_label, x_fields in specs:
        xs = {r[x_key] for r in done if r[x_key] is not None}
        if not xs or (x_key == "bits_per_parameter" and xs == {32.0} and not set(grid_names) & x_fields):
            continue
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for r in done:
            label = point_label({k: r[k] for k in grid_names if k not in x_fields}) or "all points"
            groups.setdefault(label, []).append(r)
        out_dir.mkdir(parents=True, exist_ok=True)
        _plot(groups, x_key, x_label, out_dir / name, title=f"{title}: test accuracy vs {x_label}", champion=champion)
        written.append(out_dir / name)
    return written


def _plot(groups: Mapping[str, Sequence[Mapping[str, Any]]], x_key: str, x_label: str, path: Path, *, title: str,
          champion: Mapping[str, Any] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=100)
    finite_x = []
    for i, (label, rows) in enumerate(groups.items()):
        color = f"C{i % 10}"
        points = sorted((r[x_key], r["final_test_accuracy"]) for r in rows
                        if r[x_key] is not None and math.isfinite(r[x_key]))
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=color, label=label)
            finite_x += [x for x, _ in points]
        for r in rows:  # no ε (no DP) or ε = ∞ (no noise): a reference level, not a point on the axis
            if r[x_key] is None or not math.isfinite(r[x_key]):
                what = "no DP" if r[x_key] is None else "no noise"
                ax.axhline(r["final_test_accuracy"], color=color, linestyle="--", linewidth=1,
                           label=f"{label}, {r['point']}: {what} (ε = ∞)")
    if champion is not None and champion[x_key] is not None and math.isfinite(champion[x_key]):
        ax.plot([champion[x_key]], [champion["final_test_accuracy"]], marker="*", markersize=16, color="gold",
                markeredgecolor="black", linestyle="none", label=f"champion {champion['point']}")
    if finite_x and min(finite_x) > 0 and max(finite_x) / min(finite_x) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("final test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
