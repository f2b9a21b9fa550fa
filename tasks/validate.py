"""Validate step: stop a bad staged data set before any training, with a report a person can read.

Two layers, in order:

1. **Structural checks** (plain Python; GX cannot express them): the manifest is the one staging
   wrote (``content_sha256``), every shard exists with its recorded size and SHA-256, each client's
   row group is where the manifest says with as many rows, client ids are unique and non-empty per
   split (and disjoint between train and test for a ``by_client`` split), train and test are
   non-empty, the schema has the columns its kind needs, the config fits the data (clients per
   round), the model can train this kind, and the source files are the ones staged. When the files
   or the manifest cannot be trusted, the examples are not read at all.
2. **Great Expectations suites** chosen by the data set's kind, run on a pandas frame of one row per
   example (``split``, ``client_id`` and per-example columns; tensors enter as per-example
   ``<x>_min``/``<x>_max``/``<x>_finite``, text as the strings plus ``<col>_oov`` counts), and on a
   frame of one row per client (``num_examples``).

Decisions, for a user reading a failure:

- *Every class present in training* fails the run when there are at most
  :data:`MAX_CLASSES_ALL_REQUIRED` classes (a digit no client holds can never be learned: stop), and
  is a warning above that (large label spaces, e.g. EMNIST-62 or CIFAR-100 subsets, routinely miss
  rare classes in a drawn subset of clients).
- *Text vocabulary*: the 86 characters of TFF's Shakespeare text-generation tutorial. The rate is per
  character (out-of-vocabulary characters / all characters, the usual OOV rate of a character
  model); it fails above :data:`MAX_OOV_RATE` (1 %): below that the tutorial maps them to the OOV
  token harmlessly, above it the vocabulary does not fit the text. The rate and the most frequent
  unknown characters are always in the statistics.
- *Which clients, which values*: GX 1.24 runs with ``SUMMARY`` results (sample values for Data
  Docs); the clients named in a problem line come from the same frame with the expectation's own
  arguments, because GX's ``unexpected_index_column_names`` costs ~7 s per 200k unexpected rows
  here (measured), which a fully broken data set would pay per expectation.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks import atomic, shards
from tasks.config import TEXT_MODELS, ExperimentConfig
from tasks.expectations import (
    DIGEST_KEY,
    RATINGS_COLUMNS,
    RESTAGE_FIX,
    SUMMARY_LINES,
    Check,
    _clip,
    _count,
    _listing,
    _size,
    client_frame,
    example_frame,
    run_suites,
)
from tasks.shards import manifest_digest  # the writer records it; re-exported for callers

log = logging.getLogger(__name__)

# The character vocabulary of TFF's text-generation tutorial (Shakespeare), 86 characters.


class Error(Exception):
    """Base class for validation errors."""


class DataValidationError(Error):
    """The staged data set failed validation; the message lists every failed check."""


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    dataset: str
    kind: str
    success: bool
    checks: tuple[Check, ...]
    statistics: dict[str, Any]
    docs_index: str | None = None

    def problems(self) -> list[str]:
        """Every failed critical check's problem lines (empty when the data set passed)."""
        return [p for c in self.checks if not c.success and c.severity == "critical" for p in c.problems]

    def warnings(self) -> list[str]:
        return [p for c in self.checks if not c.success and c.severity != "critical" for p in c.problems]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "problems": self.problems(), "warnings": self.warnings()}

    def summary(self) -> str:
        """One screen of text: the data set, its size, every check ✓/✗ (⚠ for a failed warning), the verdict."""
        s = self.statistics
        lines = [f"Validation of {self.dataset} ({self.kind}), fingerprint {s.get('fingerprint', '?')}"]
        splits = s.get("splits", {})
        lines.append("  " + "; ".join(f"{name}: {_count(v['clients'], 'client')}, {_count(v['examples'], 'example')}"
                                      for name, v in sorted(splits.items(), key=lambda kv: kv[0] != "train")))
        if epc := s.get("examples_per_client"):
            lines.append(f"  examples per train client: min {epc['min']:,}, median {epc['median']:g}, "
                         f"max {epc['max']:,}")
        if "oov_rate" in s:
            top = ", ".join(f"{ch!r} ×{n}" for ch, n in s["top_unknown_characters"][:5]) or "none"
            lines.append(f"  text: {s['characters']:,} characters, out of vocabulary {s['oov_rate']:.3%} (top: {top})")
        rows = [("✓" if c.success else "✗" if c.severity == "critical" else "⚠", c) for c in self.checks]
        room = SUMMARY_LINES - len(lines) - 2  # the Data Docs and verdict lines follow
        if len(rows) > room:  # keep the structure and every failure; fold the rest of the passing expectations
            folded = [c for _, c in rows if c.success and c.origin != "structure"]
            keep = {id(c) for c in folded[: max(0, room - 1 - (len(rows) - len(folded)))]}
            rows = [(m, c) for m, c in rows if id(c) in keep or not (c.success and c.origin != "structure")]
            lines += [_clip(f"  {m} {c.name}: {c.detail}") for m, c in rows]
            lines.append(f"  ✓ {len(folded) - len(keep)} more expectation(s) passed (see Data Docs)")
        else:
            lines += [_clip(f"  {m} {c.name}: {c.detail}") for m, c in rows]
        lines.append(f"  Data Docs: {self.docs_index or 'not built'}")
        problems, warnings = self.problems(), self.warnings()
        verdict = "PASSED" if self.success else f"FAILED: {len(problems)} problem(s), first: {problems[0]}"
        extra = f" ({len(warnings)} warning(s))" if warnings else ""
        took = s.get("seconds", {}).get("total")
        lines.append(_clip(f"Verdict: {verdict}{extra}" + (f" [{took:.1f} s]" if took is not None else "")))
        return "\n".join(lines)


def validate_staged(manifest: shards.Manifest, cfg: ExperimentConfig, *, training: bool = True,
                    source_identity: Mapping[str, Any] | None = None, docs_dir: Path | None = None) -> ValidationReport:
    """Validates a staged data set for ``cfg``: structural checks, then the kind's GX suites.

    Args:
      manifest: the staged data set.
      cfg: the experiment (min examples per client, clients per round, held-out clients, model).
      training: False (the data-only DAG) skips the checks only training needs (model, clients per round).
      source_identity: ``stage.open_source(cfg).identity()`` recomputed now; compared with the identity
        recorded at staging (None: not checked, e.g. digits, which has no source files).
      docs_dir: where to write the GX Data Docs site (replaced as a whole); None: no Data Docs.

    Returns:
      The report; ``success`` is False when any critical check failed. Nothing raises for bad data.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    checks, blocking = structural_checks(manifest, cfg, training=training, source_identity=source_identity)
    seconds["structure"] = time.perf_counter() - started
    statistics: dict[str, Any] = {"dataset": manifest.data.get("dataset", "?"), "kind": _kind(manifest),
                                  "fingerprint": manifest.data.get("fingerprint", "?"),
                                  "splits": _split_sizes(manifest)}
    docs_index = None
    if not blocking:
        t = time.perf_counter()
        examples, text_stats = example_frame(manifest)
        clients = client_frame(examples)
        seconds["read"] = time.perf_counter() - t
        statistics.update(_statistics(manifest, examples, clients, text_stats))
        t = time.perf_counter()
        expectation_checks, docs_index = run_suites(manifest, cfg, examples, clients, text_stats, docs_dir=docs_dir)
        seconds["expectations_and_docs"] = time.perf_counter() - t
        checks += expectation_checks
    seconds["total"] = time.perf_counter() - started
    statistics["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    success = all(c.success for c in checks if c.severity == "critical")
    report = ValidationReport(statistics["dataset"], statistics["kind"], success, tuple(checks), statistics, docs_index)
    log.info("Validation of %s:\n%s", manifest.root, report.summary())
    return report


# -- structural checks ------------------------------------------------------------------------------
def structural_checks(manifest: shards.Manifest, cfg: ExperimentConfig, *, training: bool = True,
                      source_identity: Mapping[str, Any] | None = None) -> tuple[list[Check], bool]:
    """The checks GX cannot express; also returns whether the examples are unsafe to read."""
    missing = [k for k in ("schema", "splits", "files") if k not in manifest.data]
    if missing:
        problem = (f"manifest {manifest.root / shards.MANIFEST} lacks {missing} (format_version "
                   f"{manifest.data.get('format_version')}; this validator reads {shards.FORMAT_VERSION}). "
                   + RESTAGE_FIX)
        return [_failed("manifest format", [problem])], True
    integrity = [_check_digest(manifest), _check_files(manifest)]
    if integrity[1].success:
        integrity.append(_check_layout(manifest))
    integrity += [_check_schema(manifest), _check_client_ids(manifest)]
    checks = [*integrity, _check_clients(manifest), _check_splits(manifest)]
    if training:
        checks.append(_check_clients_per_round(manifest, cfg))
        if integrity[-2].success:  # a readable schema
            checks.append(_check_model(manifest, cfg))
    if source_identity is not None:
        checks.append(_check_source(manifest, source_identity))
    return checks, not all(c.success for c in integrity)


def _passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def _failed(name: str, problems: Sequence[str], severity: str = "critical") -> Check:
    detail = problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
    return Check(name, False, detail, tuple(problems), severity)


def _check_digest(manifest: shards.Manifest) -> Check:
    recorded = manifest.data.get(DIGEST_KEY)
    if recorded is None:
        return _passed("manifest digest", "no content_sha256 recorded (staged before digests)")
    actual = manifest_digest(manifest.data)
    if actual != recorded:
        return _failed("manifest digest", [
            f"manifest {manifest.root / shards.MANIFEST} was edited after staging: its content_sha256 is "
            f"{recorded[:12]}…, its content hashes to {actual[:12]}…. {RESTAGE_FIX}"])
    return _passed("manifest digest", "content_sha256 matches")


def _check_files(manifest: shards.Manifest) -> Check:
    problems, total = [], 0
    for name, meta in manifest.data.get("files", {}).items():
        path = manifest.root / name
        if not path.is_file():
            problems.append(f"shard {name} is missing from {manifest.root}. {RESTAGE_FIX}")
            continue
        size = path.stat().st_size
        total += size
        if "bytes" in meta and size != meta["bytes"]:
            problems.append(f"shard {name} has {size:,} bytes, the manifest says {meta['bytes']:,} (truncated or "
                            f"modified). {RESTAGE_FIX}")
        elif atomic.sha256_file(path) != meta["sha256"]:
            problems.append(f"shard {name} does not match its manifest checksum (SHA-256; modified). {RESTAGE_FIX}")
    if problems:
        return _failed("shard files", problems)
    return _passed("shard files", f"{len(manifest.data.get('files', {}))} files ({_size(total)}), sizes and "
                                  "sha256 match the manifest")


def _check_layout(manifest: shards.Manifest) -> Check:
    problems: list[str] = []
    files = manifest.data.get("files", {})
    metadata = {name: pq.ParquetFile(manifest.root / name).metadata for name in files}
    try:
        expected_schema = manifest.schema.arrow_schema()
    except (shards.Error, KeyError, TypeError, ValueError) as e:
        return _failed("shard layout", [f"manifest schema cannot be read: {e}. {RESTAGE_FIX}"])
    for name, meta in metadata.items():
        if not meta.schema.to_arrow_schema().remove_metadata().equals(expected_schema):
            problems.append(f"shard {name}: columns {meta.schema.to_arrow_schema().names} / types do not match the "
                            f"manifest schema {expected_schema.names}. {RESTAGE_FIX}")
    used: collections.Counter[str] = collections.Counter()
    for split, info in manifest.data["splits"].items():
        clients = info.get("clients", [])
        for c in clients:
            where = f"client {c['id']!r} ({split})"
            meta = metadata.get(c["shard"])
            if meta is None:
                problems.append(f"{where}: shard {c['shard']} is not among the manifest's files. {RESTAGE_FIX}")
                continue
            used[c["shard"]] += 1
            if not 0 <= c["row_group"] < meta.num_row_groups:
                problems.append(f"{where}: row group {c['row_group']} is not in {c['shard']} "
                                f"({meta.num_row_groups} row groups). {RESTAGE_FIX}")
                continue
            rg = meta.row_group(c["row_group"])
            if rg.num_rows != c["num_examples"]:
                problems.append(f"{where}: the manifest says {c['num_examples']:,} examples, row group "
                                f"{c['row_group']} of {c['shard']} has {rg.num_rows:,}. {RESTAGE_FIX}")
            stats = rg.column(0).statistics if rg.num_rows else None
            if stats is not None and stats.has_min_max and not (stats.min == stats.max == c["id"]):
                problems.append(f"{where}: row group {c['row_group']} of {c['shard']} holds client ids "
                                f"{stats.min!r}..{stats.max!r}. {RESTAGE_FIX}")
        if info.get("num_clients", len(clients)) != len(clients) or \
                info.get("num_examples") != sum(c["num_examples"] for c in clients):
            problems.append(f"split {split!r}: num_clients/num_examples ({info.get('num_clients')}, "
                            f"{info.get('num_examples')}) disagree with its client list ({len(clients)}, "
                            f"{sum(c['num_examples'] for c in clients)}). {RESTAGE_FIX}")
    for name, meta in metadata.items():
        if used[name] != meta.num_row_groups:
            problems.append(f"shard {name} has {meta.num_row_groups} row groups, the manifest lists {used[name]} "
                            f"clients in it. {RESTAGE_FIX}")
    if problems:
        return _failed("shard layout", problems)
    return _passed("shard layout", "schema, row groups and row counts match the manifest")


def _check_schema(manifest: shards.Manifest) -> Check:
    """The columns the kind needs exist (their dtypes are GX's to check)."""
    try:
        schema = manifest.schema
    except (shards.Error, KeyError, TypeError, ValueError) as e:
        return _failed("schema", [f"the manifest's schema is unreadable: {e}. {RESTAGE_FIX}"])
    names = [c.name for c in schema.columns]
    problems = []
    if schema.kind in ("image", "vector"):
        x = schema.column(schema.x) if schema.x else None
        if x is None or x.dtype == "string" or not x.shape:
            problems.append(f"kind {schema.kind!r} needs a numeric tensor column x; the schema has x={schema.x!r} "
                            f"(columns {names}).")
        elif schema.kind == "image" and len(x.shape) not in (2, 3):
            problems.append(f"kind 'image' needs x of rank 2 or 3 (h, w[, c]); {x.name!r} has shape {x.shape}.")
    elif schema.kind == "text":
        if not any(c.dtype == "string" for c in schema.columns):
            problems.append(f"kind 'text' needs a string column; the schema has {names}.")
    elif schema.kind == "ratings":
        missing = [f"{n} ({t})" for n, t in RATINGS_COLUMNS.items() if n not in names]
        if missing:
            problems.append(f"kind 'ratings' needs columns {missing}; the schema has {names}.")
    if problems:
        return _failed("schema", [f"{p} Fix: re-stage with a source reader that writes them." for p in problems])
    return _passed("schema", f"{schema.kind}: columns {names}")


def _check_client_ids(manifest: shards.Manifest) -> Check:
    problems = []
    for split, info in manifest.data["splits"].items():
        counts = collections.Counter(c["id"] for c in info.get("clients", []))
        dup = sorted(cid for cid, n in counts.items() if n > 1)
        if dup:
            problems.append(f"split {split!r} lists duplicate client ids {_listing(dup)}. {RESTAGE_FIX}")
    if problems:
        return _failed("client ids", problems)
    return _passed("client ids", "unique in every split")


def _check_clients(manifest: shards.Manifest) -> Check:
    problems = []
    for split, info in manifest.data["splits"].items():
        empty = [c["id"] for c in info.get("clients", []) if c["num_examples"] < 1]
        if empty:
            problems.append(f"split {split!r} has empty clients (no examples): {_listing(empty)}. Fix: drop empty "
                            "clients from the source and re-stage.")
    if manifest.data.get("settings", {}).get("split") == "by_client":
        both = sorted(set(manifest.client_ids("train")) & set(manifest.client_ids("test")))
        if both:
            problems.append(f"split 'by_client' must keep test clients out of training, but {len(both)} client(s) "
                            f"are in both train and test: {_listing(both)}. {RESTAGE_FIX}")
    if problems:
        return _failed("clients", problems)
    return _passed("clients", "none empty" + (", train and test disjoint (by_client)"
                                              if manifest.data.get("settings", {}).get("split") == "by_client" else ""))


def _check_splits(manifest: shards.Manifest) -> Check:
    problems = []
    for split in ("train", "test"):
        info = manifest.data["splits"].get(split, {})
        if not info.get("clients") or not info.get("num_examples"):
            problems.append(f"split {split!r} is empty (no clients or no examples). Fix: re-stage with a smaller "
                            "test_fraction / more clients, or a source that has a test file (split 'source').")
    if problems:
        return _failed("splits", problems)
    return _passed("splits", "train and test are non-empty")


def _check_clients_per_round(manifest: shards.Manifest, cfg: ExperimentConfig) -> Check:
    train = len(manifest.clients("train"))
    usable = train - cfg.heldout_clients
    if cfg.clients_per_round > usable:
        return _failed("clients per round", [
            f"clients_per_round={cfg.clients_per_round} exceeds the {usable} training clients "
            f"({train} train clients - {cfg.heldout_clients} held out). Fix: lower clients_per_round or "
            "heldout_clients, or stage more clients (num_clients)."])
    return _passed("clients per round", f"{cfg.clients_per_round} of {usable} training clients per round")


def _check_model(manifest: shards.Manifest, cfg: ExperimentConfig) -> Check:
    schema = manifest.schema
    if cfg.model == "matrix_factorization":  # fed_recon (trainer/reconstruction.py) factorises ratings
        names = {c.name for c in schema.columns}
        if schema.kind != "ratings" or not {"item_id", "rating"} <= names or "max_item_id" not in manifest.data.get(
                "source", {}):
            return _failed("model compatibility", [
                f"model 'matrix_factorization' factorises ratings (item_id, rating, and the source's max_item_id); "
                f"this is {schema.kind} data with columns {sorted(names)}. Fix: dataset='movielens'."])
        return _passed("model compatibility", "model 'matrix_factorization' fits the ratings (item_id, rating)")
    if cfg.model == "bag_of_words_logistic":  # sparse_select (trainer/sparse_training.py): a line's words -> its play
        if schema.kind == "text":
            return _passed("model compatibility", f"model {cfg.model!r} tags the lines of {schema.x!r} with their play")
        return _failed("model compatibility", [f"model {cfg.model!r} reads lines of text; this is {schema.kind} data. "
                                               "Fix: dataset='shakespeare'."])
    if cfg.model in TEXT_MODELS:  # next-character prediction (trainer/text.py)
        if schema.kind == "text":
            return _passed("model compatibility", f"model {cfg.model!r} predicts the next character of {schema.x!r}")
        return _failed("model compatibility", [f"model {cfg.model!r} trains on text only; this is {schema.kind} "
                                               "data. Fix: another model (cnn, mlp, softmax)."])
    if schema.kind not in ("image", "vector") or schema.label is None:
        what = f"{schema.kind} data" + ("" if schema.kind in ("text", "ratings") else " without a label")
        return _failed("model compatibility", [
            f"model {cfg.model!r} cannot train this data set: the training engine trains labelled images and feature "
            f"vectors, and this is {what} (kind {schema.kind!r}). Fix: use the federated_data DAG to stage/validate "
            "only (training on text and ratings comes with their recipes)."])
    x = schema.column(schema.x)
    if cfg.model == "cnn" and (schema.kind != "image" or len(x.shape) not in (2, 3)):
        return _failed("model compatibility", [
            f"model 'cnn' needs images (x of rank 2 or 3); {x.name!r} has shape {x.shape} ({schema.kind}). "
            "Fix: set model 'mlp', or feature_shape (e.g. '28,28') to read each example as an image, and re-stage."])
    return _passed("model compatibility", f"model {cfg.model!r} fits {schema.kind} x{x.shape}")


def _check_source(manifest: shards.Manifest, identity: Mapping[str, Any]) -> Check:
    staged = manifest.data.get("settings", {}).get("source")
    if staged is None:
        return _failed("source unchanged", ["the manifest records no source identity to compare with (staged "
                                            "from a built-in data set)."], severity="warning")
    if "unreadable" in identity:  # the caller could not open the source: {"unreadable": the SourceError}
        return _failed("source unchanged", [f"the source cannot be read now, so it may have changed since staging: "
                                            f"{identity['unreadable']}"])
    old, new = dict(_source_files(staged)), dict(_source_files(identity))
    changed = [_file_change(old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
               if old.get(k) is None or new.get(k) is None or old[k][1] != new[k][1]]
    fix = ("Fix: re-run the DAG: staging fingerprints the source, so the changed data is staged afresh under a new "
           "fingerprint (or restore the original files to train on the staged copy).")
    if changed:
        return _failed("source unchanged", [f"source file(s) changed since staging: {', '.join(changed)}. {fix}"])
    settings = sorted(k for k in staged.keys() | identity.keys() if staged.get(k) != identity.get(k)
                      and k not in _file_keys(staged) | _file_keys(identity))
    if settings:
        return _failed("source unchanged", [f"source settings changed since staging: {settings}. {fix}"])
    return _passed("source unchanged", f"{len(old)} source file(s) match the staged checksums")


def _file_change(old: tuple[str, str] | None, new: tuple[str, str] | None) -> str:
    if new is None:
        return f"{old[0]} (no longer part of the source)"
    if old is None:
        return f"{new[0]} (new in the source)"
    return f"{new[0]} (sha256 {new[1][:12]}…, staged from {old[1][:12]}…)"


def _source_files(value: Any, path: str = "") -> Iterator[tuple[str, tuple[str, str]]]:
    """(key path, (file name, sha256)) of every ``{"sha256": ...}`` record inside a source identity."""
    if isinstance(value, Mapping):
        if isinstance(value.get("sha256"), str):
            yield path or "file", (str(value.get("file", path or "source")), value["sha256"])
            return
        for k, v in value.items():
            yield from _source_files(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _source_files(v, f"{path}[{i}]")


def _file_keys(identity: Mapping[str, Any]) -> set[str]:
    return {k for k, v in identity.items() if k in ("file", "sha256") or any(True for _ in _source_files(v))}


# -- statistics ------------------------------------------------------------------------------------
def _kind(manifest: shards.Manifest) -> str:
    try:
        return manifest.kind
    except (shards.Error, KeyError, TypeError, ValueError):
        return "?"


def _split_sizes(manifest: shards.Manifest) -> dict[str, dict[str, int]]:
    return {split: {"clients": len(info.get("clients", [])),
                    "examples": int(sum(c.get("num_examples", 0) for c in info.get("clients", [])))}
            for split, info in manifest.data.get("splits", {}).items()}


def _statistics(manifest: shards.Manifest, examples: pd.DataFrame, clients: pd.DataFrame,
                text_stats: Mapping[str, Any]) -> dict[str, Any]:
    train = clients.loc[clients["split"] == "train", "num_examples"].to_numpy()
    stats: dict[str, Any] = {"examples": int(len(examples)), "train_clients": int(len(train))}
    if len(train):
        stats["examples_per_client"] = {"min": int(train.min()), "median": float(np.median(train)),
                                        "max": int(train.max())}
    schema = manifest.schema
    if schema.label is not None and schema.kind in ("image", "vector"):
        labels = examples.loc[examples["split"] == "train", schema.label]
        stats["train_label_counts"] = {str(k): int(v) for k, v in labels.value_counts().sort_index().items()}
    if any(c.dtype == "string" for c in schema.columns):
        unknown = text_stats["unknown"]
        chars = text_stats["characters"]
        stats.update(characters=int(chars), oov_rate=(sum(unknown.values()) / chars) if chars else 0.0,
                     top_unknown_characters=[[ch, int(n)] for ch, n in unknown.most_common(10)])
    return stats
