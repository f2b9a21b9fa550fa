"""Per-run plots from ``metrics.jsonl``, logged to MLflow beside MLflow's own metric charts: loss and
accuracy vs round, ε vs round (DP runs), compression ratio vs round (compressed runs). PNG files,
rendered headless (Agg) so they work on any worker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks import metrics_log

# (file, title, y label, [(metric key, legend label)]); a plot is drawn when any of its keys has values.
PLOTS = (
    ("loss.png", "Loss", "loss", [("train_loss", "train"), ("test_loss", "test (central)"),
                                  ("heldout_loss", "held-out clients")]),
    ("accuracy.png", "Accuracy", "accuracy", [("train_accuracy", "train"), ("test_accuracy", "test (central)"),
                                              ("heldout_accuracy", "held-out clients")]),
    ("epsilon.png", "Privacy spent", "ε at δ", [("epsilon", "RDP"), ("epsilon_pld", "PLD")]),
    ("compression.png", "Update compression", "float32 bits / bits sent", [("compression_ratio", "ratio")]),
)


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def render(metrics_path: Path, out_dir: Path, *, title: str = "") -> list[Path]:
    """Writes every plot the run's metrics support into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics_log.read_rows(metrics_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, heading, ylabel, keys in PLOTS:
        lines = [(label, *series(rows, key)) for key, label in keys]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for label, x, y in lines:
            ax.plot(x, y, marker="o" if len(x) <= 20 else None, markersize=3, label=label)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{heading} — {title}" if title else heading)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def bar_chart(labels: Sequence[str], bars: Sequence[tuple[str, Sequence[float]]], out_path: Path, *, title: str,
              ylabel: str) -> Path:
    """Grouped vertical bars, one group per label and one bar per ``(legend, values)`` of ``bars`` (e.g. the
    heavy hitters' counts with and without DP); written as PNG to ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(bars))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(labels) * max(1, len(bars))), 4.0), dpi=100)
    for i, (legend, values) in enumerate(bars):
        ax.bar([x + (i - (len(bars) - 1) / 2) * width for x in range(len(labels))], values, width, label=legend)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(bars) > 1:
        ax.legend()
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
