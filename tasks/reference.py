"""The reference check that ends every recipe run: each claim of the tutorial, our measured value, pass/fail.

A recipe's ``checks`` (recipes/<name>.yaml) name values of the finished run and a rule::

    - name: loss_falls_every_round
      claim: "train loss falls every round"           # the tutorial's claim, in words
      tutorial: "12.4 -> 4.3 over 10 rounds"          # the tutorial's own number, where it prints one
      kind: decreasing                                # the rule (KINDS)
      value: rows.train_loss

Values are addressed as ``rows.<key>`` (the per-round series of ``metrics.jsonl``), ``last.<key>`` (the
newest round that has the key), ``first.<key>`` (the oldest), ``final.<key>`` (``final.json``: the exported model on the test split) or
``results.<key>`` (``recipe_results.json``: what the trainer measured for the recipe, e.g. a baseline).
Rules: ``decreasing`` (every round below the one before), ``at_least``/``at_most`` (``threshold``),
``greater`` (above ``other``, another value), ``within`` (``|value - other| <= tolerance``) and
``equals`` (``== expected``).

The outcome goes to the run's MLflow run as a table artifact (``reference/reference_check.{csv,md,html}``)
and tags (``fedflow.reference_check``: ``pass`` or ``fail (k of n)``; ``fedflow.reference.<check>``). A
failed check does not fail the DAG run: the model and metrics stay inspectable, and the tag says it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import atomic, metrics_log, tables

if TYPE_CHECKING:
    from tasks.paths import RunPaths
    from tasks.recipes import Recipe

KINDS = {
    "decreasing": (),
    "at_least": ("threshold",),
    "at_most": ("threshold",),
    "greater": ("other",),
    "within": ("other", "tolerance"),
    "equals": ("expected",),
}
SOURCES = ("rows", "last", "final", "results", "first")
# A sweep recipe's checks address a grid point's run: ``point[<label>].<source>.<key>``, the label as the
# comparison table writes it (e.g. ``point[aggregator=compression].final.test_accuracy``).
_POINT = re.compile(r"point\[(?P<label>[^\]]+)\]\.(?P<address>.+)")
COLUMNS = ("check", "claim", "tutorial", "measured", "rule", "result")
RESULTS_FILE = "recipe_results.json"


class Error(Exception):
    """Base class for reference-check errors."""


def validate_checks(recipe: Recipe) -> None:
    """Raises (a recipe error naming the file and check) when a check is malformed."""
    from tasks.recipes import RecipeError  # noqa: PLC0415 - recipes imports this module

    labels = None
    if recipe.is_sweep:
        from tasks import sweep  # noqa: PLC0415

        labels = [p["label"] for p in sweep.from_recipe(recipe).points()]
    seen = set()
    for check in recipe.checks:
        name, kind = check.get("name"), check.get("kind")
        where = f"{recipe.path}: check {name!r}"
        if name in seen:
            raise RecipeError(f"{where} appears twice. Fix: give each check its own name.")
        seen.add(name)
        if kind not in KINDS:
            raise RecipeError(f"{where}: kind must be one of {list(KINDS)}. Got {kind!r}.")
        missing = [k for k in ("value", "claim", *KINDS[kind]) if k not in check]
        if missing:
            raise RecipeError(f"{where} ({kind}) needs {missing}. Fix: add them (tasks/reference.py).")
        for key in ("value", "other"):
            if key not in check:
                continue
            address = str(check[key])
            if labels is not None:
                match = _POINT.fullmatch(address)
                if not match or match["label"] not in labels:
                    raise RecipeError(f"{where}: {key} must be point[<label>].<source>.<key> with a label of "
                                      f"{labels}. Got {address!r}.")
                address = match["address"]
            if address.partition(".")[0] not in SOURCES:
                raise RecipeError(f"{where}: {key} must start with one of {list(SOURCES)}. Got {check[key]!r}.")


class RunValues:
    """The values a check can address, read once from the run directory."""

    def __init__(self, run: RunPaths) -> None:
        self.rows = metrics_log.read_rows(run.metrics) if run.metrics.exists() else []
        self.final = atomic.read_json(run.final) if run.final.exists() else {}
        results = run.root / RESULTS_FILE
        self.results = atomic.read_json(results) if results.exists() else {}

    def get(self, address: str) -> Any:
        source, _, key = address.partition(".")
        if source == "rows":
            return [r[key] for r in self.rows if key in r]
        if source == "last":
            return next((r[key] for r in reversed(self.rows) if key in r), None)
        if source == "first":
            return next((r[key] for r in self.rows if key in r), None)
        return (self.final if source == "final" else self.results).get(key)


class SweepValues:
    """A sweep recipe's values: each grid point's :class:`RunValues`, by the point's label."""

    def __init__(self, points: Mapping[str, RunValues]) -> None:
        self.points = dict(points)

    def get(self, address: str) -> Any:
        match = _POINT.fullmatch(address)
        values = self.points.get(match["label"]) if match else None
        return None if values is None else values.get(match["address"])


def evaluate(checks: Sequence[Mapping[str, Any]], values: RunValues | SweepValues) -> list[dict[str, Any]]:
    """One table row per check: the claim, the tutorial's number, what this run measured, the rule, pass/fail."""
    return [_evaluate(check, values) for check in checks]


def _evaluate(check: Mapping[str, Any], values: RunValues | SweepValues) -> dict[str, Any]:
    kind, value = check["kind"], values.get(check["value"])
    other = values.get(check["other"]) if "other" in check else None
    row = {"check": check["name"], "claim": check["claim"], "tutorial": str(check.get("tutorial", ""))}
    missing = [a for a, v in ((check["value"], value), (check.get("other"), other)) if a and v in (None, [])]
    if missing:
        return {**row, "measured": f"missing: {', '.join(missing)}", "rule": kind, "result": "fail"}
    if kind == "decreasing":
        rises = [i + 1 for i in range(1, len(value)) if not value[i] < value[i - 1]]
        measured = " → ".join(_fmt(v) for v in (value if len(value) <= 6 else [*value[:3], *value[-2:]]))
        passed = len(value) >= 2 and not rises
        rule = "falls every round" + (f"; rose at {len(rises)} round(s), first round {rises[0]}" if rises else "")
        return {**row, "measured": measured, "rule": rule, "result": _result(passed)}
    if kind in ("at_least", "at_most"):
        threshold = float(check["threshold"])
        passed = value >= threshold if kind == "at_least" else value <= threshold
        return {**row, "measured": _fmt(value), "rule": f"{'≥' if kind == 'at_least' else '≤'} {_fmt(threshold)}",
                "result": _result(passed)}
    if kind == "greater":
        return {**row, "measured": f"{_fmt(value)} vs {_fmt(other)} ({check['other']})",
                "rule": f"> {check['other']}", "result": _result(value > other)}
    if kind == "within":
        tolerance = float(check["tolerance"])
        return {**row, "measured": f"{_fmt(value)} vs {_fmt(other)}; |Δ| = {_fmt(abs(value - other))}",
                "rule": f"|Δ| ≤ {_fmt(tolerance)}", "result": _result(abs(value - other) <= tolerance)}
    expected = check["expected"]
    return {**row, "measured": _fmt(value), "rule": f"= {_fmt(expected)}", "result": _result(value == expected)}


def _result(passed: bool) -> str:
    return "pass" if passed else "fail"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return str(value)


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    failed = sum(r["result"] != "pass" for r in rows)
    return "pass" if not failed else f"fail ({failed} of {len(rows)})"


def write(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    return tables.write(rows, COLUMNS, out_dir, "reference_check", cell=lambda _, v: "" if v is None else str(v),
                        highlight=lambda r: r["result"])
