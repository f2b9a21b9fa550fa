"""The Great Expectations side of validation: the per-example and per-client frames GX validates,
the suites chosen by the data set's kind, and GX results turned into lines a person can read
(which clients, which values). :mod:`tasks.validate` runs the structural checks and calls this.

Decisions are explained in :mod:`tasks.validate`'s docstring.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import shards
from tasks.config import ExperimentConfig

VOCABULARY = frozenset('dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26:\naeimquyAEIMQUY]!%)-159\r')
_DROP_VOCABULARY = {ord(ch): None for ch in VOCABULARY}
MAX_OOV_RATE = 0.01
MAX_TEXT_CHARS = 10_000
MAX_CLASSES_ALL_REQUIRED = 100
DEFAULT_RATING_RANGE = (1.0, 5.0)  # a source may record another scale as manifest["source"]["rating_range"]
RATINGS_COLUMNS = {"item_id": "int64", "rating": "float32", "timestamp": "int64"}
LABEL_TYPES = ["int64", "int32", "int16", "int8", "uint8", "uint16"]
MAX_LISTED = 5
SUMMARY_LINES = 25
DIGEST_KEY = "content_sha256"
RESTAGE_FIX = "Fix: delete the staged directory and re-run the DAG (staging writes a fresh copy)."


@dataclasses.dataclass(frozen=True)
class Check:
    """One check's outcome. ``problems`` are full lines (what, where, the fix); ``detail`` is the
    one-line result for the summary. A failed ``warning`` check is reported but does not fail."""

    name: str
    success: bool
    detail: str
    problems: tuple[str, ...] = ()
    severity: str = "critical"
    origin: str = "structure"  # or "great_expectations"




# -- the frames GX validates ------------------------------------------------------------------------
def example_frame(manifest: shards.Manifest) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per example (``split``, ``client_id``, per-example columns), read client by client.

    Columns are collected per client and concatenated once (linear in the data set). Tensors become
    ``<name>_finite`` (every value finite) and, for the image ``x``, ``<x>_min``/``<x>_max`` over the
    finite values; strings stay, with ``<name>_oov`` (characters outside :data:`VOCABULARY`).
    Returns the frame and the text statistics (characters, unknown-character counts).
    """
    schema = manifest.schema
    parts: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    owners: list[tuple[str, str, int]] = []
    unknown: collections.Counter[str] = collections.Counter()
    chars = 0
    for split in sorted(manifest.splits, key=lambda name: name != "train"):  # training clients first
        for cid in manifest.client_ids(split):
            columns = manifest.read_columns(split, cid)
            owners.append((split, cid, len(next(iter(columns.values())))))
            for col in schema.columns:
                values = columns[col.name]
                if col.dtype == "string":
                    rest = [v.translate(_DROP_VOCABULARY) if isinstance(v, str) else "" for v in values]
                    parts[f"{col.name}_oov"].append(np.fromiter(map(len, rest), np.int64, len(rest)))
                    unknown.update("".join(rest))
                    chars += sum(len(v) for v in values if isinstance(v, str))
                    parts[col.name].append(values)
                elif col.shape:
                    _add_tensor_columns(parts, col, values, is_image_x=schema.kind == "image" and col.name == schema.x)
                else:
                    parts[col.name].append(values)
    lengths = [n for _, _, n in owners]
    frame = pd.DataFrame({
        "split": pd.Categorical(np.repeat(np.array([s for s, _, _ in owners], dtype=object), lengths)),
        "client_id": pd.Categorical(np.repeat(np.array([c for _, c, _ in owners], dtype=object), lengths)),
        **{name: np.concatenate(arrays) for name, arrays in parts.items()},
    })
    return frame, {"characters": chars, "unknown": unknown}


def _add_tensor_columns(into: dict[str, list[np.ndarray]], col: shards.Column, values: np.ndarray, *,
                        is_image_x: bool) -> None:
    flat = values.reshape(len(values), int(np.prod(col.shape)))
    finite = np.isfinite(flat) if flat.dtype.kind == "f" else np.ones(flat.shape, bool)
    into[f"{col.name}_finite"].append(finite.all(axis=1))
    if is_image_x:
        lo = np.min(flat, axis=1, where=finite, initial=np.inf).astype(np.float64)
        hi = np.max(flat, axis=1, where=finite, initial=-np.inf).astype(np.float64)
        none = ~finite.any(axis=1)
        lo[none], hi[none] = np.nan, np.nan
        into[f"{col.name}_min"].append(lo)
        into[f"{col.name}_max"].append(hi)


def client_frame(examples: pd.DataFrame) -> pd.DataFrame:
    """One row per client: ``split``, ``client_id``, ``num_examples`` (counted from the examples)."""
    counts = examples.groupby(["split", "client_id"], observed=True).size()
    return counts.rename("num_examples").reset_index().astype({"split": str, "client_id": str})


# -- the GX suites ---------------------------------------------------------------------------------
def example_expectations(manifest: shards.Manifest, frame: pd.DataFrame) -> list:
    """The per-example suite of the data set's kind (GX expectation objects)."""
    import great_expectations.expectations as gxe

    schema = manifest.schema
    needed = ["split", "client_id"]
    out = [gxe.ExpectColumnValuesToNotBeNull(column="client_id", notes="Every example carries its client's id.")]
    for col in schema.columns:
        if col.dtype == "string":
            needed.append(col.name)
            out += [
                gxe.ExpectColumnValuesToNotBeNull(column=col.name),
                gxe.ExpectColumnValuesToBeOfType(column=col.name, type_="str"),
                gxe.ExpectColumnValueLengthsToBeBetween(
                    column=col.name, min_value=1, max_value=MAX_TEXT_CHARS,
                    notes="Fix: drop empty (or split over-long) examples in the source and re-stage."),
            ]
            allowed = math.floor(MAX_OOV_RATE * frame[col.name].str.len().sum())
            out.append(gxe.ExpectColumnSumToBeBetween(
                column=f"{col.name}_oov", min_value=0, max_value=allowed, meta={"fedflow": "oov", "column": col.name},
                notes=f"Characters outside the {len(VOCABULARY)}-character vocabulary of TFF's text tutorial: at "
                      f"most {MAX_OOV_RATE:.0%} of all characters."))
        elif col.shape:
            needed.append(f"{col.name}_finite")
            out.append(gxe.ExpectColumnValuesToBeInSet(
                column=f"{col.name}_finite", value_set=[True],
                notes="Every value of every example is finite (no NaN, no ±inf). Fix: repair or drop those "
                      "examples in the source and re-stage."))
        else:
            needed.append(col.name)
            if col.name != schema.label:  # the label's checks follow
                out.append(gxe.ExpectColumnValuesToNotBeNull(column=col.name))
    if schema.kind in ("image", "vector") and schema.label is not None:
        out += _label_expectations(gxe, schema.label, manifest.num_classes)
    if schema.kind == "image":
        x = schema.column(schema.x)
        lo, hi = (0.0, 1.0) if np.dtype(x.dtype).kind == "f" else (0, 255)
        fix = ("Fix: scale float pixels to [0, 1] (divide by 255) or stage them as uint8." if hi == 1.0
               else "Fix: store pixel values 0..255.")
        needed += [f"{x.name}_min", f"{x.name}_max"]
        out += [gxe.ExpectColumnValuesToBeBetween(column=f"{x.name}_{end}", min_value=lo, max_value=hi,
                                                  notes=f"Pixels ({x.dtype}) lie in [{lo}, {hi}]. {fix}")
                for end in ("min", "max")]
    if schema.kind == "ratings":
        low, high = (manifest.data.get("source") or {}).get("rating_range", DEFAULT_RATING_RANGE)
        out += [gxe.ExpectColumnValuesToBeOfType(column=n, type_=t) for n, t in RATINGS_COLUMNS.items()]
        out += [
            gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=low, max_value=high,
                                              notes="Fix: rescale the ratings, or record the source's scale as "
                                                    "source.rating_range when staging."),
            gxe.ExpectColumnValuesToBeBetween(column="item_id", min_value=1, notes="Item ids start at 1."),
            gxe.ExpectColumnValuesToBeBetween(column="timestamp", min_value=0, notes="Unix seconds."),
        ]
    return [gxe.ExpectTableColumnsToMatchSet(column_set=needed, exact_match=False,
                                             notes=f"The per-example columns a {schema.kind} data set needs."), *out]


def _label_expectations(gxe, label: str, num_classes: int) -> list:
    critical = num_classes <= MAX_CLASSES_ALL_REQUIRED
    return [
        gxe.ExpectColumnValuesToNotBeNull(column=label),
        gxe.ExpectColumnValuesToBeInTypeList(column=label, type_list=LABEL_TYPES),
        gxe.ExpectColumnValuesToBeBetween(
            column=label, min_value=0, max_value=num_classes - 1,
            notes=f"Labels are classes 0..{num_classes - 1} (num_classes from the manifest). Fix: map the source's "
                  "classes to 0..num_classes-1, or raise num_classes and re-stage."),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column=label, value_set=list(range(num_classes)), row_condition='split=="train"', condition_parser="pandas",
            severity="critical" if critical else "warning",
            notes=("Every class occurs in the training split" + ("" if critical else
                   f" (a warning only: more than {MAX_CLASSES_ALL_REQUIRED} classes)") + ". Fix: a partition that "
                   "gives every class to some training client (larger dirichlet_alpha, more clients), or fewer "
                   "num_classes.")),
    ]


def client_expectations(cfg: ExperimentConfig) -> list:
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(
        column="num_examples", min_value=cfg.min_examples_per_client, row_condition='split=="train"',
        condition_parser="pandas",
        notes=f"Every training client has at least min_examples_per_client={cfg.min_examples_per_client} examples. "
              "Fix: lower min_examples_per_client, or re-stage (staging keeps only clients with enough examples).")]


def run_suites(manifest: shards.Manifest, cfg: ExperimentConfig, examples: pd.DataFrame, clients: pd.DataFrame,
               text_stats: Mapping[str, Any], *, docs_dir: Path | None = None) -> tuple[list[Check], str | None]:
    """Runs both suites in one ephemeral GX context; builds Data Docs into ``docs_dir`` when given."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    tmp_docs = None
    if docs_dir is not None:
        docs_dir = Path(docs_dir)
        docs_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_docs = docs_dir.parent / f".{docs_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sites = {} if tmp_docs is None else {"fedflow": {
        "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp_docs)}}}
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False), analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False), data_docs_sites=sites))
    source = context.data_sources.add_pandas("fedflow")
    dataset = manifest.data.get("dataset", "data")
    run_id = RunIdentifier(run_name=str(manifest.data.get("fingerprint", "staged")))
    checks: list[Check] = []
    suites = [("examples", examples, example_expectations(manifest, examples)),
              ("clients", clients, client_expectations(cfg))]
    for unit, frame, expectations in suites:
        batch = source.add_dataframe_asset(unit).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{dataset}.{manifest.kind}.{unit}",
                                                       expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=unit, data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": frame}, run_id=run_id,
                                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20})
        checks += [_expectation_check(r, frame, unit, text_stats)
                   for r in _in_suite_order(result.results, expectations)]
    if tmp_docs is None:
        return checks, None
    try:  # built aside and swapped in: a reader never sees half a site or a stale one mixed in
        context.build_data_docs(site_names=["fedflow"])
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        os.rename(tmp_docs, docs_dir)
    finally:
        shutil.rmtree(tmp_docs, ignore_errors=True)
    return checks, str(docs_dir / "index.html")


def _in_suite_order(results: list, expectations: list) -> list:
    order = {e.id: i for i, e in enumerate(expectations)}
    return sorted(results, key=lambda r: order.get(r.expectation_config.id, len(order)))


# -- expectation results as lines a person can read -------------------------------------------------
def _expectation_check(result: Any, frame: pd.DataFrame, unit: str, text_stats: Mapping[str, Any]) -> Check:
    config = result.expectation_config
    name = f"{config.type}({_describe_args(config.kwargs)})"
    severity = getattr(config.severity, "value", str(config.severity))
    r = result.result or {}
    exception = _exception_message(result.exception_info)
    if exception:
        detail = f"could not run: {exception}"
    elif (config.meta or {}).get("fedflow") == "oov":
        detail = _oov_detail(config, frame, text_stats, result.success)
    elif "unexpected_count" in r and r.get("element_count") is not None:
        detail = _unexpected_detail(config, frame, unit, r, result.success)
    elif "missing_count" in r:  # distinct values to contain set
        detail = "all present" if result.success else \
            f"missing {r['missing_count']}: {_values(r['partial_missing_list'], total=r['missing_count'])}"
    elif config.type == "expect_table_columns_to_match_set":
        missing = (r.get("details", {}).get("mismatched") or {}).get("missing", [])
        detail = f"missing columns {missing}" if missing else "all present"
    else:
        detail = f"observed {_values([r.get('observed_value')])[1:-1]}"
    if not result.success and config.notes and "Fix:" in str(config.notes):
        fix = "Fix:" + str(config.notes).split("Fix:", 1)[1]
    else:
        fix = ""
    problems = (f"{name} failed: {detail}" + (f". {fix}" if fix else ""),) if not result.success else ()
    return Check(name, bool(result.success), detail, problems, severity, "great_expectations")


def _unexpected_detail(config: Any, frame: pd.DataFrame, unit: str, r: Mapping[str, Any], success: bool) -> str:
    total = r["element_count"]
    if success:
        return f"{total:,} {unit}"
    bad = _unexpected_mask(frame, config)
    if bad is None:  # an expectation type without a mask here: GX's own sample
        sample = r.get("partial_unexpected_list", [])[:MAX_LISTED]
        return f"{r['unexpected_count']:,} of {total:,} {unit}, e.g. values {_values(sample)}"
    column = config.kwargs["column"]
    rows = frame.loc[bad, ["client_id", column]]
    owners = _listing(list(dict.fromkeys(rows["client_id"].astype(str))))
    values = _values(rows[column].head(MAX_LISTED).tolist())  # a sample: the count is given already
    if unit == "clients":
        return f"{int(bad.sum()):,} of {total:,} clients {owners}, with {column} {values}"
    return f"{int(bad.sum()):,} of {total:,} {unit}, clients {owners}, e.g. values {values}"


def _unexpected_mask(frame: pd.DataFrame, config: Any) -> pd.Series | None:
    """Rows the expectation flags, from its own kwargs (types used in these suites)."""
    kw = config.kwargs
    condition = _row_condition(kw)
    scope = frame.eval(condition).astype(bool) if condition else pd.Series(True, index=frame.index)
    values = frame[kw["column"]]
    if config.type == "expect_column_values_to_not_be_null":
        return scope & values.isna()
    present = scope & values.notna()
    if config.type == "expect_column_values_to_be_in_set":
        return present & ~values.isin(kw["value_set"])
    if config.type in ("expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between"):
        measure = values.str.len() if config.type == "expect_column_value_lengths_to_be_between" else values
        low, high = kw.get("min_value"), kw.get("max_value")
        outside = pd.Series(False, index=frame.index)
        if low is not None:
            outside |= measure < low
        if high is not None:
            outside |= measure > high
        return present & outside
    return None


def _oov_detail(config: Any, frame: pd.DataFrame, text_stats: Mapping[str, Any], success: bool) -> str:
    column = config.meta["column"]
    oov = frame[f"{column}_oov"]
    chars = int(frame[column].str.len().sum())
    rate = int(oov.sum()) / chars if chars else 0.0
    head = f"{rate:.2%} of {chars:,} characters out of vocabulary (threshold {MAX_OOV_RATE:.0%})"
    if success:
        return head
    owners = list(frame.loc[oov > 0].groupby("client_id", observed=True).size().sort_values(ascending=False).index)
    top = [ch for ch, _ in text_stats["unknown"].most_common(MAX_LISTED)]
    return (f"{head}: {int(oov.sum()):,} in {int((oov > 0).sum()):,} of {len(frame):,} examples, clients "
            f"{_listing([str(o) for o in owners])}, e.g. characters {top}. Fix: map or strip those characters in the "
            "source, or use a vocabulary that has them")


def _row_condition(kwargs: Mapping[str, Any]) -> str:
    """The pandas condition string (GX 1.24 stores ``row_condition`` as ``{"pass_through_filter": ...}``)."""
    condition = kwargs.get("row_condition")
    if isinstance(condition, Mapping):
        condition = condition.get("pass_through_filter")
    return str(condition) if condition else ""


def _exception_message(info: Any) -> str:
    if not isinstance(info, Mapping):
        return ""
    if info.get("raised_exception"):
        return str(info.get("exception_message", "error"))
    nested = [v for v in info.values() if isinstance(v, Mapping) and v.get("raised_exception")]
    return str(nested[0].get("exception_message", "error")) if nested else ""


def _describe_args(kwargs: Mapping[str, Any]) -> str:
    parts = [kwargs["column"]] if "column" in kwargs else []
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    bounds = f"{_num(low)}..{_num(high)}" if low is not None and high is not None else \
        f"≥ {_num(low)}" if low is not None else f"≤ {_num(high)}" if high is not None else ""
    if bounds:
        parts.append(bounds)
    if "value_set" in kwargs:
        values = list(kwargs["value_set"])
        consecutive = len(values) >= 3 and values == list(range(values[0], values[0] + len(values)))
        parts.append(f"{values[0]}..{values[-1]}" if consecutive else _values(values))
    if "column_set" in kwargs:
        parts.append(_values(kwargs["column_set"]))
    for key in ("type_", "type_list"):
        if key in kwargs:
            parts.append(str(kwargs[key]))
    if condition := _row_condition(kwargs):
        parts.append(condition.replace('split=="train"', "train split"))
    return ", ".join(parts)


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _values(values: Sequence[Any], *, total: int | None = None) -> str:
    """At most MAX_LISTED of ``values`` (of ``total``, when the list is itself a sample), "and N more"."""
    shown = [v.item() if isinstance(v, np.generic) else v for v in list(values)[:MAX_LISTED]]
    shown = [v[:37] + "..." if isinstance(v, str) and len(v) > 40 else float(f"{v:.4g}") if isinstance(v, float) else v
             for v in shown]
    more = (len(values) if total is None else total) - len(shown)
    return f"{shown}" + (f" and {more:,} more" if more > 0 else "")


def _listing(items: Sequence[str]) -> str:
    return _values(list(items))


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _clip(line: str, width: int = 160) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


