"""Result tables as CSV (raw values), Markdown and HTML (for people): sweeps' comparisons and recipes'
reference checks. Plain Python."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tasks import atomic


def write(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out_dir: Path, stem: str, *,
          cell: Callable[[str, Any], str], highlight: Callable[[Mapping[str, Any]], str] | None = None) -> list[Path]:
    """``<stem>.csv``, ``<stem>.md`` and ``<stem>.html`` of ``rows`` under ``out_dir``. ``cell(column, value)``
    renders a value for the Markdown and HTML tables; ``highlight(row)`` names a CSS class for an HTML row
    ('champion', 'fail'; '' for none). Returns the paths written."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if r.get(c) is None else r.get(c) for c in columns} for r in rows)
    shown = [[cell(c, r.get(c)) for c in columns] for r in rows]
    markdown = "\n".join(["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns),
                          *("| " + " | ".join(s.replace("|", "\\|").replace("\n", " ") for s in row) + " |"
                            for row in shown)])
    body = "".join("<tr{}>{}</tr>".format(f' class="{css}"' if (css := highlight(r) if highlight else "") else "",
                                           "".join(f"<td>{html.escape(s)}</td>" for s in row))
                   for r, row in zip(rows, shown, strict=True))
    page = ("<!doctype html><meta charset=utf-8><style>table{border-collapse:collapse;font:13px sans-serif}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.champion{font-weight:bold;"
            "background:#fff6d5}.fail{background:#fde2e2}.pass{background:#e5f6e5}</style><table><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + f"</tr>{body}</table>\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".csv", buffer.getvalue()), (".md", markdown + "\n"), (".html", page)):
        atomic.write_bytes(out_dir / f"{stem}{suffix}", text.encode())
        written.append(out_dir / f"{stem}{suffix}")
    return written
