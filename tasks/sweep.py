"""Experiment sweeps: a committed YAML file -> a grid of complete experiments -> one MLflow parent run
that compares them and gives the best model the registry alias ``champion``.

A sweep file ``sweeps/<name>.yaml`` (the DAG ``sweep_<name>`` runs it)::

    description: what the sweep asks, for the people reading its results
    schedule: "@daily"          # an Airflow preset or a cron expression; null = triggered by hand
    base:                       # ExperimentConfig fields shared by every point
      rounds: 30
      aggregator: dp
    grid:                       # field -> values; the points are the cross product, in file order
      noise_multiplier: [0.3, 0.6]
      compression_bits: [8, 4]
    cases:                      # optional: a list of points given whole (settings that go together)
      - {algorithm: fedavg, server_learning_rate: 1.0}
      - {algorithm: fedadam, server_learning_rate: 0.01}

``grid`` and ``cases`` may each stand alone; together, every case is crossed with every grid point (cases
outer, grid inner). A field lives in one of base, grid and cases; a case that leaves out a field another
case sets runs with the config's default for it.

Every point's config is validated when the file is loaded, so one bad value fails the whole sweep
before anything trains, naming the file, the point and the field. Each point then runs as its own
experiment through :mod:`tasks.steps` (its own run directory and MLflow run, a child of the sweep's
parent run); ``compare`` (tasks/sweep_compare.py) tabulates and plots the results on the parent.

Module-level imports stay light (PyYAML, the config): the sweep DAG file reads the sweep files each
time Airflow parses it. MLflow, the steps and matplotlib are imported by the functions that use them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tasks import atomic, paths
from tasks.config import ConfigError, ExperimentConfig
from tasks.paths import RunPaths
from tasks.sweep_report import point_label

CHAMPION_ALIAS = "champion"
MAX_POINTS = 256  # Airflow maps at most 1024 task instances per task by default; a sweep this size is a typo
# Airflow's schedule presets (a cron expression of 5 fields is the other accepted form).
SCHEDULE_PRESETS = ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_FILE_KEYS = ("description", "schedule", "base", "grid", "cases")
_SWEPT_KEYS = ("grid", "cases")  # a sweep file needs at least one of them
_FIELDS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))
# The parent run and its children must share one experiment for MLflow to nest them.
_NOT_IN_GRID = ("experiment_name",)


class Error(Exception):
    """Base class for sweep errors."""


class SweepFileError(Error, ValueError):
    """A sweep file is missing, malformed, or one of its grid points is not a valid experiment."""


class PointsFailedError(Error):
    """Some grid points failed; raised after the comparison of the others was logged."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded, validated sweep file."""

    name: str
    path: Path
    sha256: str
    description: str
    schedule: str | None
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    cases: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def dag_id(self) -> str:
        return f"sweep_{self.name}"

    @property
    def swept_fields(self) -> list[str]:
        """The fields the points vary: the cases' (in order of first appearance), then the grid's."""
        fields = [name for case in self.cases for name in case]
        return list(dict.fromkeys([*fields, *self.grid]))

    def points(self) -> list[dict[str, Any]]:
        """Every point in file order (each case, crossed with each grid point): ``index``, ``label`` (the
        values the case and grid set), ``grid`` (every swept field's value: a case's omissions at the
        config's default), ``params``."""
        names = list(self.grid)
        defaults = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}
        points = []
        for index, (case, values) in enumerate(itertools.product(self.cases or [{}],
                                                                 itertools.product(*self.grid.values()))):
            chosen = {**case, **dict(zip(names, values, strict=True))}
            swept = {name: chosen.get(name, defaults[name]) for name in self.swept_fields}
            points.append({"index": index, "label": point_label(chosen), "grid": swept,
                           "params": {**self.base, **chosen}})
        return points


def sweeps_dir() -> Path:
    """Where the sweep files are: ``FEDFLOW_SWEEPS_DIR``, default ``sweeps/`` in the project."""
    return Path(os.environ.get("FEDFLOW_SWEEPS_DIR", paths.PROJECT_ROOT / "sweeps")).resolve()


def sweep_files() -> list[Path]:
    return sorted(sweeps_dir().glob("*.yaml"))


def recipe_sweep_files() -> list[Path]:
    """The recipe files that hold a grid (a light check of the YAML: parsing the DAG file must stay cheap
    and must not fail on a broken recipe, whose DAG then shows the error)."""
    from tasks import recipes

    found = []
    for name in recipes.names():
        path = recipes.recipes_dir() / f"{name}.yaml"
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and (doc.get("grid") or doc.get("cases")):
            found.append(path)
    return found


def dag_id_for(path: Path) -> str:
    """``sweep_<file stem>``, with characters a DAG id cannot hold replaced (a bad name is reported by
    :func:`load`; the DAG still exists to show the error)."""
    return "sweep_" + re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)


def load(path: Path, *, overrides: Mapping[str, Any] | None = None) -> Sweep:
    """Reads and validates a sweep file; ``overrides`` replace base fields for one run.

    Raises SweepFileError naming the file and every problem: the YAML, a missing or unknown key, a
    grid that is not ``field: [values]``, and each grid point whose config ExperimentConfig rejects.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = yaml.safe_load(raw)
    except OSError as e:
        raise SweepFileError(f"Cannot read sweep file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise SweepFileError(f"{path} is not valid YAML: {e}") from e
    if not _NAME.fullmatch(path.stem):
        raise SweepFileError(f"{path}: the file name is the sweep's name (DAG sweep_<name>) and must match "
                             f"{_NAME.pattern}. Got {path.stem!r}. Fix: rename the file, e.g. nightly_dp.yaml.")
    if not isinstance(doc, dict):
        raise SweepFileError(f"{path}: expected a mapping with keys {list(_FILE_KEYS)}. Got {type(doc).__name__}.")
    missing = [k for k in _FILE_KEYS if k not in doc and k not in _SWEPT_KEYS]
    if not any(k in doc for k in _SWEPT_KEYS):
        missing.append("grid or cases")
    unknown = sorted(set(doc) - set(_FILE_KEYS), key=str)
    if missing or unknown:
        raise SweepFileError(f"{path}: expected the keys {list(_FILE_KEYS)}. Got missing {missing}, unknown "
                             f"{unknown}. Fix: see sweeps/nightly_dp_compression.yaml for the layout.")
    description, schedule = doc["description"], doc["schedule"]
    if not isinstance(description, str) or not description.strip():
        raise SweepFileError(f"{path}: description must be a non-empty string. Got {description!r}.")
    _check_schedule(path, schedule)
    base = _mapping(path, "base", doc["base"] or {}, allow_empty=True)
    grid, cases = _check_swept(path, doc.get("grid"), doc.get("cases"))
    if overrides:
        _check_names(path, "overrides", overrides)
        clash = sorted(set(overrides) & (set(grid) | _case_fields(cases)))
        if clash:
            raise SweepFileError(f"{path}: overrides may change base settings, not grid parameters. Got {clash}. "
                                 "Fix: edit the grid in the file, or limit the points with max_points.")
        base = {**base, **overrides}
    clash = sorted(set(base) & set(grid))
    if clash:
        raise SweepFileError(f"{path}: {clash} set in both base and grid. Fix: keep each field in one of them.")
    clash = sorted(set(base) & _case_fields(cases))
    if clash:
        raise SweepFileError(f"{path}: {clash} set in both base and cases. Fix: keep each field in one of them.")
    sweep = Sweep(name=path.stem, path=path, sha256=hashlib.sha256(raw).hexdigest(), description=description.strip(),
                  schedule=schedule, base=base, grid=grid, cases=cases)
    _check_points(sweep)
    return sweep


def from_recipe(recipe, variant: str = "default", *, overrides: Mapping[str, Any] | None = None) -> Sweep:
    """The sweep of a sweep recipe (tasks/recipes.py): its settings for ``variant`` as the base (with the
    recipe named, so each point's reference fields and MLflow tags say which recipe it belongs to), its
    grid, its schedule. The DAG is ``sweep_recipe_<name>``."""
    path = recipe.path
    grid, cases = _check_swept(path, recipe.grid or None, getattr(recipe, "cases", None) or None)
    base = {**recipe.settings(variant), "recipe": recipe.name, "recipe_variant": variant}
    if overrides:
        _check_names(path, "overrides", overrides)
        clash = sorted(set(overrides) & (set(grid) | _case_fields(cases)))
        if clash:
            raise SweepFileError(f"{path}: overrides may change base settings, not grid parameters. Got {clash}.")
        base = {**base, **overrides}
    _check_schedule(path, recipe.schedule)
    sweep = Sweep(name=f"recipe_{recipe.name}", path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                  description=recipe.description, schedule=recipe.schedule, base=base, grid=grid, cases=cases)
    _check_points(sweep)
    return sweep


def _mapping(path: Path, key: str, value: Any, *, allow_empty: bool = False) -> dict[str, Any]:
    if not isinstance(value, dict) or not (value or allow_empty):
        raise SweepFileError(f"{path}: {key} must be a non-empty mapping of experiment fields. Got {value!r}.")
    _check_names(path, key, value)
    return dict(value)


def _check_names(path: Path, key: str, values: Mapping[str, Any]) -> None:
    for name in values:
        if name not in _FIELDS:
            close = difflib.get_close_matches(str(name), _FIELDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " Fix: use a field of the training DAG's trigger form."
            raise SweepFileError(f"{path}: {key}: unknown experiment field {name!r}.{hint}")


def _check_schedule(path: Path, schedule: Any) -> None:
    if schedule is None or schedule in SCHEDULE_PRESETS:
        return
    from croniter import croniter  # what Airflow's cron timetables use (a dependency of Airflow)

    if not isinstance(schedule, str) or len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        raise SweepFileError(f"{path}: schedule must be null, one of {list(SCHEDULE_PRESETS)} or a 5-field cron "
                             f"expression such as '0 3 * * *'. Got {schedule!r}.")


def _check_grid(path: Path, grid: dict[str, Any]) -> dict[str, list[Any]]:
    size = 1
    for name, values in grid.items():
        if name in _NOT_IN_GRID:
            raise SweepFileError(f"{path}: grid: {name} cannot vary (the points nest under one parent run in one "
                                 "experiment). Fix: set it in base.")
        if not isinstance(values, list) or not values or any(isinstance(v, (list, dict)) or v is None for v in values):
            raise SweepFileError(f"{path}: grid: {name} must be a non-empty list of values, e.g. {name}: [a, b]. "
                                 f"Got {values!r}.")
        if len({json.dumps(v) for v in values}) != len(values):
            raise SweepFileError(f"{path}: grid: {name} lists a value twice. Got {values!r}.")
        size *= len(values)
    if size > MAX_POINTS:
        raise SweepFileError(f"{path}: the grid has {size} points, more than {MAX_POINTS}. Fix: fewer values.")
    return grid


def _check_swept(path: Path, grid: Any, cases: Any) -> tuple[dict[str, list[Any]], list[dict[str, Any]]]:
    """The file's grid and cases, checked: at least one of them, each well formed, no field in both, and
    at most MAX_POINTS points in all (cases x grid points)."""
    if grid is None and cases is None:
        raise SweepFileError(f"{path}: a sweep needs a grid (field -> values, crossed) or cases (a list of "
                             "points), or both. Got neither. Fix: add grid: {noise_multiplier: [0.0, 0.5]}.")
    grid = {} if grid is None else _check_grid(path, _mapping(path, "grid", grid))
    cases = [] if cases is None else _check_cases(path, cases)
    clash = sorted(set(grid) & _case_fields(cases))
    if clash:
        raise SweepFileError(f"{path}: {clash} set in both grid and cases. Fix: keep each field in one of them.")
    size = max(len(cases), 1) * math.prod(len(v) for v in grid.values())
    if size > MAX_POINTS:
        raise SweepFileError(f"{path}: {len(cases)} cases x the grid's points = {size} points, more than "
                             f"{MAX_POINTS}. Fix: fewer cases or grid values.")
    return grid, cases


def _check_cases(path: Path, cases: Any) -> list[dict[str, Any]]:
    if not isinstance(cases, list) or not cases:
        raise SweepFileError(f"{path}: cases must be a non-empty list of mappings of experiment fields, e.g. "
                             f"[{{algorithm: fedadam, server_learning_rate: 0.01}}]. Got {cases!r}.")
    seen = {}
    for i, case in enumerate(cases):
        where = f"cases[{i}]"
        case = _mapping(path, where, case)
        for name, value in case.items():
            if name in _NOT_IN_GRID:
                raise SweepFileError(f"{path}: {where}: {name} cannot vary (the points nest under one parent run in "
                                     "one experiment). Fix: set it in base.")
            if isinstance(value, (list, dict)) or value is None:
                raise SweepFileError(f"{path}: {where}: {name} must be one value (a case is one point). Got "
                                     f"{value!r}. Fix: one case per value, or move the field to grid.")
        key = json.dumps(case, sort_keys=True)
        if key in seen:
            raise SweepFileError(f"{path}: {where} repeats cases[{seen[key]}] ({point_label(case)}). "
                                 "Fix: remove one of them.")
        seen[key] = i
    return [dict(c) for c in cases]


def _case_fields(cases: Sequence[Mapping[str, Any]]) -> set[str]:
    return {name for case in cases for name in case}


def _check_points(sweep: Sweep) -> None:
    problems = []
    for point in sweep.points():
        try:
            ExperimentConfig.from_mapping(point["params"]).check_trainable()
        except ConfigError as e:
            problems.append(f"grid point p{point['index']:02d} ({point['label']}): {e}")
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise SweepFileError(f"{sweep.path}: {len(problems)} of {len(sweep.points())} grid points are invalid "
                             "experiments:\n- " + "\n- ".join(shown))


def check_privacy_budgets(sweep: Sweep, points: Sequence[Mapping[str, Any]]) -> None:
    """Raises SweepFileError naming every point whose planned ε exceeds its ``dp_epsilon_budget``: a
    sweep must not train half its grid and then stop on the budget."""
    from tasks import privacy

    problems = []
    for point in points:
        try:
            privacy.check_budget(privacy.calibrated(ExperimentConfig.from_mapping(point["params"])))
        except (privacy.PrivacyBudgetError, privacy.CalibrationError) as e:
            problems.append(f"grid point p{point['index']:02d} ({point['label']}): {e}")
    if problems:
        raise SweepFileError(f"{sweep.path}: {len(problems)} grid point(s) would exceed their privacy budget:\n- "
                             + "\n- ".join(problems))


# -- the DAG's steps ----------------------------------------------------------------------------------

def sweep_run(dag_id: str, run_id: str) -> RunPaths:
    """The sweep run's directory (plan, point outcomes, comparison; the parent's ``mlflow_run.json``).
    Keyed by DAG and run: two sweeps scheduled at the same time have the same Airflow run id."""
    return RunPaths.for_run(dag_id, run_id)


def plan(path: Path, *, dag_id: str, run_id: str, max_points: int = 0,
         overrides: Mapping[str, Any] | None = None, recipe_variant: str | None = None) -> list[dict[str, Any]]:
    """Validates the sweep, freezes its plan in the sweep run's directory, opens the parent MLflow run
    and returns the points to run (the first ``max_points``; 0 = all), each a complete task input.
    ``recipe_variant`` given: ``path`` is a sweep recipe (recipes/<name>.yaml), run at that size.

    A retry reuses the frozen plan and the parent run; a changed file or params fail it.
    """
    if recipe_variant is not None:
        from tasks import recipes

        try:
            sweep = from_recipe(recipes.load(Path(path).stem), recipe_variant, overrides=overrides)
        except recipes.RecipeError as e:
            raise SweepFileError(str(e)) from e
    else:
        sweep = load(path, overrides=overrides)
    points = sweep.points()[: max_points or None]
    check_privacy_budgets(sweep, points)
    run = sweep_run(dag_id, run_id)
    record = {"sweep": sweep.name, "file": str(sweep.path), "sha256": sweep.sha256, "description": sweep.description,
              "base": sweep.base, "grid": sweep.grid, "cases": sweep.cases,
              "grid_fields": sweep.swept_fields,  # JSON files sort keys
              "max_points": max_points, "dag_id": dag_id, "run_id": run_id,
              "points": [{**p, "run_id": f"{run_id}__p{p['index']:02d}"} for p in points]}
    plan_file = run.root / "sweep.json"
    if plan_file.exists():
        frozen = atomic.read_json(plan_file)
        if {k: v for k, v in frozen.items() if k != "parent_run_id"} != record:
            raise SweepFileError(f"{run.root} already holds the plan of another version of {sweep.path} or other "
                                 "params. Fix: trigger a new DAG run.")
    run.root.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(run.root / "sweep.yaml", sweep.path.read_bytes())
    experiment = ExperimentConfig.from_mapping(points[0]["params"]).experiment_name  # the grid cannot vary it
    parent = _open_parent_run(sweep, run, experiment=experiment, dag_id=dag_id, run_id=run_id, num_points=len(points))
    record["parent_run_id"] = parent
    atomic.write_json(plan_file, record)
    return [{**p, "parent_run_id": parent, "sweep": sweep.name, "sweep_dir": str(run.root), "dag_id": dag_id,
             "airflow_run_id": run_id} for p in record["points"]]


def _open_parent_run(sweep: Sweep, run: RunPaths, *, experiment: str, dag_id: str, run_id: str,
                     num_points: int) -> str:
    from mlflow.entities import Param

    from tasks import tracking

    if run.mlflow_run.exists():  # an earlier try opened it
        return tracking.run_id(run)
    c = tracking.client()
    tags = {"mlflow.runName": f"{sweep.name} {run_id}", "mlflow.note.content": sweep.description,
            "fedflow.sweep": sweep.name, "fedflow.sweep_file": _display_path(sweep.path),
            "fedflow.sweep_sha256": sweep.sha256, "fedflow.sweep_points": str(num_points),
            "airflow.dag_id": dag_id, "airflow.run_id": run_id, "fedflow.git_sha": tracking.git_sha()}
    created = c.create_run(tracking.experiment_id(c, experiment), tags=tags)
    rid = created.info.run_id
    params = {**{k: str(v) for k, v in sweep.base.items()}, **{k: json.dumps(v) for k, v in sweep.grid.items()},
              **({"cases": json.dumps(sweep.cases)} if sweep.cases else {})}
    c.log_batch(rid, params=[Param(k, v) for k, v in sorted(params.items())])
    atomic.write_json(run.mlflow_run, {"run_id": rid, "experiment_id": created.info.experiment_id,
                                       "tracking_uri": paths.tracking_uri()})
    tracking.log_artifact(run, run.root / "sweep.yaml")
    return rid


def _display_path(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)


def run_point(point: Mapping[str, Any]) -> dict[str, Any]:
    """Runs one grid point as a complete experiment: resolve (its own run id, so a retry resumes its
    checkpoints; its MLflow run a child of the sweep's) -> stage (content-addressed: shared by the
    points) -> validate -> warm start -> every training chunk -> evaluate and register. Records the outcome (or the
    error) for :func:`compare` and returns the run's summary."""
    from tasks import steps, warm_start

    index = point["index"]
    outcome = Path(point["sweep_dir"]) / "points" / f"p{index:02d}.json"
    tags = {"mlflow.parentRunId": point["parent_run_id"], "mlflow.runName": f"p{index:02d} {point['label']}",
            "fedflow.sweep": point["sweep"], "fedflow.sweep_point": f"p{index:02d}", "airflow.dag_id": point["dag_id"],
            "airflow.run_id": point["airflow_run_id"], "airflow.task_id": "run_point", "airflow.map_index": str(index)}
    try:
        handle = steps.resolve(point["params"], dag_id=point["dag_id"], run_id=point["run_id"], tags=tags)
        steps.stage(handle)
        steps.validate(handle)
        warm_start.prepare(handle)  # a text point's registered (or first pretrained) model; nothing otherwise
        cfg, _ = steps.load(handle)
        for chunk in range(cfg.num_chunks):
            steps.train_chunk(handle, chunk)
        summary = steps.evaluate_and_register(handle)
    except BaseException as e:  # recorded for the comparison, then raised for Airflow's retries
        atomic.write_json(outcome, {"status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise
    atomic.write_json(outcome, {"status": "succeeded", **summary})
    return summary


def mark_failed(*, dag_id: str, run_id: str, map_index: int | None = None) -> None:
    """A sweep task failed for good: ``run_point`` marks its point's MLflow run FAILED (the sweep's
    parent is closed by ``compare``, which still runs); ``plan`` or ``compare`` mark the parent."""
    from tasks import steps, tracking

    run = sweep_run(dag_id, run_id)
    if map_index is None or map_index < 0:
        if run.mlflow_run.exists():
            tracking.finish_run(run, status="FAILED")
        return
    plan_file = run.root / "sweep.json"
    if plan_file.exists():
        steps.mark_failed(dag_id, atomic.read_json(plan_file)["points"][map_index]["run_id"])
