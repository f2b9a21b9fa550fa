"""Recipes: one committed experiment per TensorFlow Federated tutorial, picked by name in the trigger form.

A recipe file ``recipes/<name>.yaml``::

    tutorial: federated_learning_for_image_classification     # the TFF tutorial it reproduces
    title: Federated image classification
    description: what the tutorial shows, in a sentence or two
    data: what we train on here, and why it differs from the tutorial's download
    differences: every setting that differs from the tutorial, and why
    config:                    # ExperimentConfig fields: the default size (minutes on 2 cores)
      model: softmax
    variants:                  # overrides of config: 'full' (the tutorial's size), 'tiny' (tests)
      full: {rounds: 50}
      tiny: {rounds: 3}
    checks:                    # the reference check (tasks/reference.py): the tutorial's claims
      - {name: loss_falls, kind: decreasing, value: rows.train_loss, claim: "..."}
    kind: training             # optional: 'training' (the default, federated_training) or 'analytics' (the
                               # federated_analytics DAG; config and variants are AnalyticsConfig fields)

How params and a recipe combine (:func:`apply`): the recipe's settings (with its variant) replace the
config's defaults, and every param whose value differs from the config's default overrides the recipe.
The trigger form always sends every param, so "differs from the default" is the only way to tell what
a user set: a recipe value can be changed, but not back to the config's own default that way. The
``overrides`` param (a JSON object) does that: its fields are set exactly as given, over the recipe.

Module-level imports stay light (PyYAML, the config): the DAG files read the recipe names at parse time.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tasks import paths
from tasks.analytics_config import AnalyticsConfig
from tasks.config import RECIPE_VARIANTS, ConfigError, ExperimentConfig

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
NO_RECIPE = "none"  # the config's default: no recipe
_KEYS = ("tutorial", "title", "description", "data", "differences", "config", "variants", "checks", "grid",
         "schedule", "cases", "kind")
_REQUIRED = ("tutorial", "title", "description", "data", "config", "checks")
# A recipe's kind: the config its settings are fields of, and the DAG that runs it.
KINDS = {"training": (ExperimentConfig, "federated_training"), "analytics": (AnalyticsConfig, "federated_analytics")}
_RECIPE_FIELDS = ("recipe", "recipe_variant")
# The trigger form sends every param, so a param equal to the config's default cannot undo a recipe's value;
# this param (a JSON object) sets fields exactly, over the recipe and the form: {"server_momentum": 0.0}.
OVERRIDES = "overrides"


class Error(Exception):
    """Base class for recipe errors."""


class RecipeError(Error, ValueError):
    """A recipe is unknown, its file is malformed, or one of its variants is not a valid experiment."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    tutorial: str
    title: str
    description: str
    data: str
    differences: str
    config: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    checks: list[dict[str, Any]]
    # A sweep recipe (the tutorial compares settings): field -> values, run by the DAG sweep_recipe_<name>.
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    schedule: str | None = None
    # Points given whole (tasks/sweep.py): each a mapping of fields, crossed with the grid when both are set.
    cases: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kind: str = "training"  # KINDS

    @property
    def is_sweep(self) -> bool:
        return bool(self.grid or self.cases)

    def settings(self, variant: str = "default") -> dict[str, Any]:
        """The recipe's config fields for ``variant`` (the config, then the variant's overrides)."""
        if variant not in RECIPE_VARIANTS:
            raise RecipeError(f"recipe_variant must be one of {list(RECIPE_VARIANTS)}. Got {variant!r}.")
        return {**self.config, **self.variants.get(variant, {})}


def recipes_dir() -> Path:
    return Path(os.environ.get("FEDFLOW_RECIPES_DIR", paths.PROJECT_ROOT / "recipes"))


def names(kind: str | None = None) -> list[str]:
    """The recipe names, sorted (the trigger form's enum); only those of ``kind`` (KINDS) when given (a light
    read of each file's ``kind`` key: a broken file counts as a training recipe, whose load then says why)."""
    directory = recipes_dir()
    if not directory.is_dir():
        return []
    found = sorted(p.stem for p in directory.glob("*.yaml") if _NAME.fullmatch(p.stem) and p.stem != NO_RECIPE)
    return found if kind is None else [name for name in found if _declared_kind(directory / f"{name}.yaml") == kind]


def _declared_kind(path: Path) -> str:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return "training"
    return str(doc.get("kind") or "training") if isinstance(doc, dict) else "training"


def _fields(kind: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(KINDS[kind][0])}


def load(name: str) -> Recipe:
    """Reads and checks ``recipes/<name>.yaml``: its keys, and that every variant is a valid experiment."""
    path = recipes_dir() / f"{name}.yaml"
    if not _NAME.fullmatch(name or "") or name == NO_RECIPE or not path.is_file():
        close = difflib.get_close_matches(name or "", names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"Unknown recipe {name!r}; the recipes are {names()}.{hint} "
                          f"Fix: pick one of them (files in {recipes_dir()}).")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}. Fix: correct the file.") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"{path} must be a mapping with keys {list(_KEYS)}. Got {type(raw).__name__}.")
    unknown, missing = sorted(set(raw) - set(_KEYS)), [k for k in _REQUIRED if k not in raw]
    if unknown or missing:
        raise RecipeError(f"{path}: unknown keys {unknown}, missing keys {missing}. Expected {list(_KEYS)}; "
                          f"required {list(_REQUIRED)}. Fix: correct the file.")
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or set(variants) - set(RECIPE_VARIANTS):
        raise RecipeError(f"{path}: variants must map some of {list(RECIPE_VARIANTS)} to settings. Got "
                          f"{sorted(variants) if isinstance(variants, dict) else variants!r}.")
    kind = raw.get("kind") or "training"
    if kind not in KINDS or (kind != "training" and (raw.get("grid") or raw.get("cases"))):
        raise RecipeError(f"{path}: kind must be one of {list(KINDS)} (only training recipes sweep). Got {kind!r}. "
                          "Fix: correct the kind, or drop grid/cases.")
    checks = raw["checks"]
    if not isinstance(checks, list) or not checks or not all(isinstance(c, dict) and "name" in c for c in checks):
        raise RecipeError(f"{path}: checks must be a non-empty list of mappings, each with a name. "
                          "Fix: state the tutorial's claims the run must reproduce (tasks/reference.py).")
    recipe = Recipe(name=name, path=path, tutorial=str(raw["tutorial"]), title=str(raw["title"]),
                    description=str(raw["description"]).strip(), data=str(raw["data"]).strip(),
                    differences=str(raw.get("differences", "")).strip(), config=dict(raw["config"] or {}),
                    variants={k: dict(v or {}) for k, v in variants.items()}, checks=list(checks),
                    grid=dict(raw.get("grid") or {}), schedule=raw.get("schedule"), cases=_cases(path, raw), kind=kind)
    if recipe.is_sweep:
        from tasks import sweep  # noqa: PLC0415 - sweep imports this module

        for variant in RECIPE_VARIANTS:
            swept = set(recipe.grid) | {name for case in recipe.cases for name in case}
            clash = sorted(swept & set(recipe.settings(variant)))
            if clash:
                raise RecipeError(f"{path} ({variant}): {clash} are in both the grid and the settings. Fix: keep "
                                  "each field in one of them.")
            try:
                sweep.from_recipe(recipe, variant)  # every grid point a valid experiment
            except sweep.SweepFileError as e:
                raise RecipeError(f"{path} ({variant}): {e}") from e
    config_cls, fields = KINDS[kind][0], _fields(kind)
    for variant in RECIPE_VARIANTS:
        settings = recipe.settings(variant)
        bad = sorted(set(settings) - set(fields) | set(settings) & set(_RECIPE_FIELDS))
        if bad:
            raise RecipeError(f"{path} ({variant}): {bad} are not {'experiment' if kind == 'training' else kind} "
                              f"settings. Fix: use {config_cls.__name__} fields (close: "
                              f"{difflib.get_close_matches(bad[0], list(fields), n=1)}).")
        try:
            config_cls.from_mapping({**settings, "recipe": name, "recipe_variant": variant})
        except ConfigError as e:
            raise RecipeError(f"{path} ({variant}): {e}") from e
    from tasks import reference  # noqa: PLC0415 - the check kinds; a light module

    reference.validate_checks(recipe)
    return recipe


def _cases(path: Path, raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    cases = raw.get("cases") or []
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise RecipeError(f"{path}: cases must be a list of mappings of experiment fields. Got {cases!r}. "
                          "Fix: e.g. cases: [{algorithm: fedadam, server_learning_rate: 0.01}].")
    return [dict(c) for c in cases]


def apply(params: Mapping[str, Any], *, kind: str = "training") -> dict[str, Any]:
    """``params`` with the recipe they name filled in (see the module docstring), then the explicit
    ``overrides`` param (:data:`OVERRIDES`: fields set exactly as given, even back to the config's default);
    unchanged without either. ``kind``: the DAG's kind of recipe (KINDS); a recipe of another kind is
    refused, naming its DAG."""
    explicit = _overrides(params, _fields(kind))
    params = {key: value for key, value in params.items() if key != OVERRIDES}
    name = params.get("recipe") or NO_RECIPE
    if name == NO_RECIPE:
        return {**params, **explicit}
    variant = params.get("recipe_variant") or "default"
    recipe = load(name)
    if recipe.kind != kind:
        raise RecipeError(f"Recipe {name!r} is a {recipe.kind} recipe; this DAG runs {kind} recipes "
                          f"({names(kind)}). Fix: run it with the DAG {KINDS[recipe.kind][1]} "
                          f"(make run RECIPE={name}).")
    fields = _fields(kind)
    changed = {key: value for key, value in params.items()
               if key not in _RECIPE_FIELDS and key in fields and not _is_default(fields[key], value)}
    unknown = {key: value for key, value in params.items() if key not in fields}  # from_mapping names them
    return {**recipe.settings(variant), **changed, **unknown, **explicit, "recipe": name, "recipe_variant": variant}


def _overrides(params: Mapping[str, Any], fields: Mapping[str, dataclasses.Field]) -> dict[str, Any]:
    explicit = params.get(OVERRIDES) or {}
    if not isinstance(explicit, Mapping):
        raise RecipeError(f"{OVERRIDES} must be a JSON object of experiment settings. Got {explicit!r}. "
                          'Fix: e.g. {"server_momentum": 0.0}.')
    bad = sorted(set(explicit) - set(fields) | set(explicit) & set(_RECIPE_FIELDS))
    if bad:
        raise RecipeError(f"{OVERRIDES} sets {bad}, which are not experiment settings it can set. Fix: use config "
                          f"fields (close: {difflib.get_close_matches(bad[0], list(fields), n=1)}); pick the "
                          "recipe and its size with the recipe params.")
    return dict(explicit)


def _is_default(field: dataclasses.Field, value: Any) -> bool:
    default = field.default
    if value is None and default == "":  # an optional text field the trigger form left empty
        return True
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value) == default
    return value == default and type(value) is type(default)


def trigger(name: str, variant: str = "default", overrides: Mapping[str, Any] | None = None) -> tuple[str, dict]:
    """(DAG id, conf) that run recipe ``name``: its kind's DAG (training, analytics) with the recipe picked, or a sweep
    recipe's own DAG ``sweep_recipe_<name>``; ``overrides`` change its settings for this run."""
    recipe = load(name)
    overrides = dict(overrides or {})
    if recipe.is_sweep:
        return f"sweep_recipe_{name}", {"recipe_variant": variant, "overrides": overrides}
    if recipe.kind != "training":
        return KINDS[recipe.kind][1], {**overrides, "recipe": name, "recipe_variant": variant}
    conf = {"recipe": name, "recipe_variant": variant, OVERRIDES: overrides}  # exact, even back to a default
    # Fails here, with the config's own message (e.g. engine 'tff_jax', tasks/config_jax.py), rather than in
    # Airflow's param check, which knows only the enum.
    ExperimentConfig.from_mapping(apply(conf))
    return "federated_training", conf


def main(argv: list[str] | None = None) -> int:
    """``python -m tasks.recipes trigger NAME VARIANT '{json}'`` prints the DAG id and its conf (a tab
    between them) for ``make run``; a bad name or JSON is a one-line error and exit status 2."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or args[0] != "trigger":
        print("usage: python -m tasks.recipes trigger NAME VARIANT '{json overrides}'", file=sys.stderr)
        return 2
    try:
        overrides = json.loads(args[3] or "{}")
        if not isinstance(overrides, dict):
            raise ValueError(f"expected a JSON object, got {args[3]!r}")
        dag_id, conf = trigger(args[1], args[2], overrides)
    except (RecipeError, ValueError) as e:
        print(f"make run: {e}", file=sys.stderr)
        return 2
    print(f"{dag_id}\t{json.dumps(conf)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
