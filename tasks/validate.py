"""Validate step: structural checks of a staged data set, then a Great Expectations suite.

Structural checks (files present, checksums, row groups where the manifest says, enough clients and
examples for the config) run first; the GX suite then checks the examples themselves (labels in range,
pixels finite and in [0, 1], no missing client ids, every class present in training). Either kind of
failure stops the run before any training, with every problem listed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks import atomic, shards
from tasks.config import ExperimentConfig

log = logging.getLogger(__name__)
SUITE_NAME = "fedflow_staged_examples"


class Error(Exception):
    """Base class for validation errors."""


class DataValidationError(Error):
    """The staged data set failed validation; the message lists every failed check."""


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    success: bool
    structural_problems: list[str]
    expectations: list[dict[str, Any]]
    statistics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def problems(self) -> list[str]:
        failed = [
            f"expectation {e['expectation']} on {e['column'] or 'table'} failed "
            f"(expected {e['expected']}): {e['observed']}"
            for e in self.expectations
            if not e["success"]
        ]
        return [*self.structural_problems, *failed]


def validate_staged(manifest: shards.Manifest, cfg: ExperimentConfig) -> ValidationReport:
    problems = check_structure(manifest, cfg)
    if problems:  # the examples cannot be trusted (or even read): report without running the suite
        return ValidationReport(False, problems, [], {})
    frame = example_frame(manifest)
    expectations = run_expectation_suite(frame, manifest.num_classes)
    statistics = {
        "examples": int(len(frame)),
        "train_clients": len(manifest.client_ids("train")),
        "examples_per_client": _describe([c["num_examples"] for c in manifest.data["splits"]["train"]["clients"]]),
    }
    success = all(e["success"] for e in expectations)
    return ValidationReport(success, [], expectations, statistics)


def check_structure(manifest: shards.Manifest, cfg: ExperimentConfig) -> list[str]:
    problems = []
    for name, meta in manifest.data["files"].items():
        path = manifest.root / name
        if not path.exists():
            problems.append(f"shard {name} is missing from {manifest.root}")
        elif atomic.sha256_file(path) != meta["sha256"]:
            problems.append(f"shard {name} does not match its manifest checksum (modified or truncated)")
    if problems:
        return problems
    shard_metadata = {name: pq.ParquetFile(manifest.root / name).metadata for name in manifest.data["files"]}
    for split in ("train", "test"):
        clients = manifest.data["splits"][split]["clients"]
        if not clients:
            problems.append(f"split {split!r} has no clients")
        ids = [c["id"] for c in clients]
        if len(set(ids)) != len(ids):
            problems.append(f"split {split!r} lists duplicate client ids")
        for c in clients:
            metadata = shard_metadata.get(c["shard"])
            if metadata is None:
                problems.append(f"client {c['id']}: shard {c['shard']} is not among the manifest's files")
            elif c["row_group"] >= metadata.num_row_groups:
                problems.append(f"client {c['id']}: row group {c['row_group']} is not in {c['shard']}")
            elif metadata.row_group(c["row_group"]).num_rows != c["num_examples"]:
                problems.append(
                    f"client {c['id']}: manifest says {c['num_examples']} examples, "
                    f"row group has {metadata.row_group(c['row_group']).num_rows}"
                )
    train = manifest.data["splits"]["train"]["clients"]
    small = [c["id"] for c in train if c["num_examples"] < cfg.min_examples_per_client]
    if small:
        problems.append(f"clients with fewer than min_examples_per_client={cfg.min_examples_per_client}: {small}")
    if len(train) < cfg.clients_per_round:
        problems.append(f"clients_per_round={cfg.clients_per_round} exceeds the {len(train)} training clients")
    return problems


def example_frame(manifest: shards.Manifest) -> pd.DataFrame:
    """One row per example: split, client_id, label, and per-example pixel statistics."""
    frames = []
    for split in ("train", "test"):
        for client_id in manifest.client_ids(split):
            ex = manifest.read_client(split, client_id)
            flat = ex.x.reshape(len(ex.y), -1)
            finite = np.isfinite(flat).all(axis=1)
            frames.append(
                pd.DataFrame(
                    {
                        "split": split,
                        "client_id": client_id,
                        "label": ex.y,
                        "pixel_min": flat.min(axis=1),  # NaN where not finite: caught below
                        "pixel_max": flat.max(axis=1),
                        "pixels_finite": finite,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def run_expectation_suite(frame: pd.DataFrame, num_classes: int) -> list[dict[str, Any]]:
    """Runs the GX suite on ``frame`` with an ephemeral context; one summary dict per expectation."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("fedflow")
        .add_dataframe_asset("staged_examples")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(
        name=SUITE_NAME,
        expectations=[
            gxe.ExpectColumnValuesToNotBeNull(column="client_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="label"),
            gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=num_classes - 1),
            gxe.ExpectColumnValuesToBeInSet(column="pixels_finite", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=0.0, max_value=1.0),
            gxe.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=0.0, max_value=1.0),
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="label", value_set=list(range(num_classes)),
                row_condition='split=="train"', condition_parser="pandas",
            ),
        ],
    )
    result = batch.validate(suite, result_format="SUMMARY")
    return [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column"),
            "success": bool(r.success),
            "expected": {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("column", "batch_id")},
            "observed": _observed(r.result),
        }
        for r in result.results
    ]


def _observed(result: dict[str, Any]) -> str:
    if "unexpected_count" in result and result.get("unexpected_count"):
        sample = result.get("partial_unexpected_list", [])[:5]
        return f"{result['unexpected_count']} unexpected values, e.g. {sample}"
    if result.get("missing_count"):  # e.g. expect_column_distinct_values_to_contain_set
        return f"{result['missing_count']} missing values: {result.get('partial_missing_list', [])[:20]}"
    if result.get("observed_value") is not None:
        return f"observed {result['observed_value']}"
    return "ok"


def _describe(values: list[int]) -> dict[str, float]:
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max()), "total": int(a.sum())}
