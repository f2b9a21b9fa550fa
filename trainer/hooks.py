"""User hooks named in the config as ``package.module:function`` (custom_aggregator, learning_process):
imported in the TFF environment, with one error that names the setting and the fix."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def import_function(setting: str, value: str, error: type[Exception], arguments: str) -> Callable:
    """The function ``value`` (``module:function``) of config setting ``setting``; raises ``error`` when it
    cannot be imported or is not callable (``arguments``: what it is called with, for the message)."""
    module_name, _, function_name = value.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as e:
        raise error(
            f"{setting} {value!r} cannot be imported in the TFF environment: {e}. Fix: put the module on the "
            "project's path (e.g. under the project root) and check the module and function names."
        ) from e
    if not callable(function):
        raise error(f"{setting} {value!r} must name a function of ({arguments}). Got {type(function).__name__}.")
    return function
