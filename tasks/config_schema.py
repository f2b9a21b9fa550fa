"""Each config field on its own: its JSON-schema (the DAG's trigger form, from the field's metadata) and the
coercion and bounds check of one value, which raises ConfigError naming the field."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from typing import Any

from tasks import config_jax
from tasks.config import ConfigError, ExperimentConfig

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _python_type(f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(ExperimentConfig)
    return hints[f.name]


def checked(f: dataclasses.Field, value: Any) -> Any:
    """Returns ``value`` coerced to the field's type, or raises ConfigError naming the field."""
    meta = f.metadata
    kind = _python_type(f)
    name = f.name
    if value is None and f.default == "":  # an optional text field the trigger form left empty
        return ""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON (and the trigger form's schema) does not tell 5.0 from 5
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(
            f"{name} must be of type {_JSON_TYPES[kind]}. Got {value!r} ({type(value).__name__})."
        )
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number. Got {value!r}.")
    bounds = describe_bounds(meta)
    if "minimum" in meta and value < meta["minimum"]:
        raise ConfigError(f"{name} must be {bounds}. Got {value!r}.")
    if "exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"]:
        raise ConfigError(f"{name} must be {bounds}. Got {value!r}.")
    if "maximum" in meta and value > meta["maximum"]:
        raise ConfigError(f"{name} must be {bounds}. Got {value!r}.")
    if "enum" in meta and value not in meta["enum"]:
        unavailable = config_jax.unavailable_choice(name, value)  # a choice TFF 0.87 cannot offer, and why
        raise ConfigError(unavailable or f"{name} must be one of {meta['enum']}. Got {value!r}.")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(f"{name} must match {meta['pattern']!r}. Got {value!r}.")
    return value


def describe_bounds(meta: Mapping[str, Any]) -> str:
    low = (
        f"> {meta['exclusiveMinimum']}" if "exclusiveMinimum" in meta
        else f">= {meta['minimum']}" if "minimum" in meta else ""
    )
    high = f"<= {meta['maximum']}" if "maximum" in meta else ""
    return " and ".join(part for part in (low, high) if part)


def param_schemas() -> dict[str, dict[str, Any]]:
    """JSON-schema of every field with its default: the input to the DAG's ``Param`` objects."""
    schemas = {}
    for f in dataclasses.fields(ExperimentConfig):
        json_type = _JSON_TYPES[_python_type(f)]
        # Optional text ("" = not set) must also accept null: Airflow's trigger form treats an empty
        # field of a non-nullable type as required and keeps the Trigger button disabled.
        schema = {"type": [json_type, "null"] if f.default == "" else json_type, **f.metadata}
        schemas[f.name] = {"default": f.default, **schema}
    return schemas
