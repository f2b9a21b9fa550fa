"""Private heavy hitters (TFF's private_heavy_hitters tutorial) over the staged plays, in the TFF environment.

    python -m trainer.heavy_hitters --run-dir data/runs/<run>

Reads the run's frozen :class:`~tasks.analytics_config.AnalyticsConfig` (``analytics_config.json``) and the staged data
set (``staged.json``); every client of both staged splits takes part, one ``tf.data`` dataset of its words
(``tasks.heavy_hitters.tokenize``) batched by ``batch_size``. Runs
``tff.analytics.heavy_hitters.iblt.build_iblt_computation`` with the config's parameters, and measures what the
tutorial claims against exact references computed in Python from the same words:

- the release: each decoded word's count and number of contributing clients against
  :func:`tasks.heavy_hitters.expected_histogram` under the same contribution rule (with one contribution per
  client: the number of clients whose top ``max_words_per_user`` words hold the word);
- ``dp``: the tutorial's Laplace-and-threshold step on the full decoded histogram (a second computation
  without ``max_heavy_hitters`` when that is set, as the tutorial builds one), every DP word checked to be in
  that non-DP histogram;
- ``counter_check``: every word of every client (multi_contribution, no bounds, capacity twice the distinct
  words) against a direct ``collections.Counter``.

Writes ``heavy_hitters.json`` (the tables) and ``recipe_results.json`` (flat numbers for the reference check,
``results.<key>``). Every exit path ends TFF's ``worker_binary`` (trainer/lifecycle.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("fedflow.trainer")
HEAVY_HITTERS_FILE = "heavy_hitters.json"
RESULTS_FILE = "recipe_results.json"  # tasks.reference.RESULTS_FILE (not imported: it reaches tasks.steps' side)


class Error(Exception):
    """Base class for heavy-hitters errors."""


def read_clients(manifest) -> list[tuple[str, list[str]]]:
    """(client id, words) of every staged client, train and test splits together, sorted by id."""
    from tasks.heavy_hitters import client_words

    column = manifest.schema.x
    clients = [
        (cid, client_words(manifest.read_columns(split, cid, [column])[column]))
        for split in manifest.splits
        for cid in manifest.client_ids(split)
    ]
    if not clients:
        raise Error(f"The staged data set {manifest.root} has no clients. Fix: stage plays that have speaking roles.")
    return sorted(clients)


def run_computation(datasets: list, *, cfg, **overrides) -> dict[str, Any]:
    """One ``build_iblt_computation`` over ``datasets`` with ``cfg``'s parameters (``overrides`` replace some):
    the decoded words (bytes) with counts and contributing clients, clients, num_not_decoded and seconds."""
    import tensorflow_federated as tff

    settings = {
        "capacity": cfg.capacity,
        "string_max_bytes": cfg.string_max_bytes,
        "max_words_per_user": cfg.max_words_per_user,
        "max_heavy_hitters": cfg.max_heavy_hitters,
        "multi_contribution": cfg.multi_contribution,
        **overrides,
    }
    started = time.perf_counter()
    computation = tff.analytics.heavy_hitters.iblt.build_iblt_computation(
        capacity=settings["capacity"],
        string_max_bytes=settings["string_max_bytes"],
        max_words_per_user=settings["max_words_per_user"] or None,
        max_heavy_hitters=settings["max_heavy_hitters"] or None,
        multi_contribution=settings["multi_contribution"],
        secure_sum_bitwidth=cfg.secure_sum_bitwidth or None,
        batch_size=cfg.batch_size,
    )
    output = computation(datasets)
    words = [bytes(w) for w in output.heavy_hitters]
    decoded = {
        w: (int(c), int(u))
        for w, c, u in zip(words, output.heavy_hitters_counts, output.heavy_hitters_unique_counts, strict=True)
    }
    if len(decoded) != len(words):
        raise Error(f"The IBLT decoded a word twice ({len(words)} words, {len(decoded)} distinct).")
    seconds = time.perf_counter() - started
    log.info(
        "IBLT %s: %d clients, %d words decoded, %d not decoded, %.1f s",
        settings,
        int(output.clients),
        len(decoded),
        int(output.num_not_decoded),
        seconds,
    )
    return {
        "words": decoded,
        "order": words,
        "clients": int(output.clients),
        "num_not_decoded": int(output.num_not_decoded),
        "seconds": seconds,
        "settings": settings,
    }


def datasets_of(clients: Sequence[tuple[str, list[str]]], batch_size: int) -> list:
    import tensorflow as tf

    return [
        tf.data.Dataset.from_tensor_slices(tf.constant(words, dtype=tf.string, shape=[len(words)])).batch(batch_size)
        for _, words in clients
    ]


def measure(cfg, clients: Sequence[tuple[str, list[str]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the computations ``cfg`` asks for; returns (tables for heavy_hitters.json, flat results). With a
    secure sum they run in TFF's test runtime (the local C++ runtime cannot run secure sums; the test runtime
    replaces them with their plain bodies: the same bit widths and modular sums, no cryptography); TFF's own
    context is back afterwards."""
    import tensorflow_federated as tff

    if cfg.secure_sum_bitwidth:
        tff.backends.test.set_sync_test_cpp_execution_context()
    try:
        return _measure(cfg, clients)
    finally:
        if cfg.secure_sum_bitwidth:
            tff.backends.native.set_sync_local_cpp_execution_context()


def _measure(cfg, clients: Sequence[tuple[str, list[str]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    datasets = datasets_of(clients, cfg.batch_size)
    release = run_computation(datasets, cfg=cfg)
    rows, results = _release_results(cfg, clients, release)
    tables = {"release": rows, "dp": None, "counter": None}
    if cfg.dp:  # on the full histogram: selecting the top words before the noise would leak (the tutorial's too)
        full = release if not cfg.max_heavy_hitters else run_computation(datasets, cfg=cfg, max_heavy_hitters=0)
        tables["dp"] = _dp_release(cfg, full, results)
    if cfg.counter_check:
        tables["counter"] = _counter_check(cfg, [w for _, w in clients], datasets, results)
    return tables, results


def _release_results(cfg, clients, release: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The released words against the exact reference under the config's contribution rule."""
    from tasks import heavy_hitters as hh

    rule = {
        "string_max_bytes": cfg.string_max_bytes,
        "max_words_per_user": cfg.max_words_per_user,
        "multi_contribution": cfg.multi_contribution,
        "batch_size": cfg.batch_size,
    }
    expected, users = hh.expected_histogram([w for _, w in clients], **rule)
    rows = [
        {
            "word": hh.show(w),
            "count": release["words"][w][0],
            "clients": release["words"][w][1],
            "expected_count": expected.get(w, 0),
            "expected_clients": users.get(w, 0),
        }
        for w in release["order"]
    ]
    mismatched = [r["word"] for r in rows if (r["count"], r["clients"]) != (r["expected_count"], r["expected_clients"])]
    if mismatched:
        log.warning("Decoded counts that differ from the reference: %s", mismatched[:20])
    unreleased = [c for w, c in expected.items() if w not in release["words"]]
    return rows, {
        "clients": release["clients"],
        "staged_clients": len(clients),
        "words_released": len(rows),
        "num_not_decoded": release["num_not_decoded"],
        "count_mismatches": len(mismatched),
        "distinct_words_expected": len(expected),
        "seconds_release": round(release["seconds"], 3),
        # >= 0 when the release holds the most counted words (ties may go either way)
        "top_words_gap": min((r["count"] for r in rows), default=0) - max(unreleased, default=0),
        "top_word_count": max((r["count"] for r in rows), default=0),
    }


def _dp_release(cfg, full: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    """The tutorial's central DP step on the full decoded histogram; adds its numbers to ``results``."""
    from tasks import heavy_hitters as hh

    counts = {w: c for w, (c, _) in full["words"].items()}
    noisy = hh.dp_release(counts, scale=cfg.laplace_scale, threshold=cfg.threshold, seed=cfg.seed)
    results.update(
        {
            "dp_words_released": len(noisy),
            "dp_words_not_in_non_dp": sum(w not in counts for w in noisy),
            "dp_non_dp_words": len(counts),
            "epsilon": cfg.dp_epsilon,
            "delta": cfg.dp_delta,
            "dp_threshold": cfg.threshold,
            "dp_laplace_scale": cfg.laplace_scale,
        }
    )
    return [
        {"word": hh.show(w), "dp_count": c, "count": counts.get(w, 0)}
        for w, c in sorted(noisy.items(), key=lambda item: (-item[1], item[0]))
    ]


def _counter_check(cfg, words: list[list[str]], datasets: list, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every word of every client (multi_contribution, no bounds, capacity twice the distinct words) against a
    direct Counter; adds its numbers to ``results``, returns the Counter's 50 most common words."""
    from tasks import heavy_hitters as hh

    counter = hh.word_counter(words, cfg.string_max_bytes)
    exact = run_computation(
        datasets,
        cfg=cfg,
        capacity=max(cfg.capacity, 2 * len(counter)),
        max_words_per_user=0,
        max_heavy_hitters=0,
        multi_contribution=True,
    )
    decoded = {w: c for w, (c, _) in exact["words"].items()}
    differ = set(decoded) ^ set(counter) | {w for w in decoded if decoded[w] != counter.get(w)}
    results.update(
        {
            "counter_words": len(counter),
            "counter_tokens": sum(counter.values()),
            "counter_mismatches": len(differ),
            "counter_not_decoded": exact["num_not_decoded"],
            "counter_capacity": exact["settings"]["capacity"],
            "seconds_counter": round(exact["seconds"], 3),
        }
    )
    return [{"word": hh.show(w), "count": c} for w, c in sorted(counter.items(), key=lambda i: (-i[1], i[0]))[:50]]


def run(run_dir: Path) -> dict[str, Any]:
    """The heavy-hitters step of a run directory; writes and returns its results."""
    from tasks import atomic, shards
    from tasks.analytics_config import CONFIG_FILE, AnalyticsConfig

    run_dir = Path(run_dir)
    cfg = AnalyticsConfig.read_json(run_dir / CONFIG_FILE)
    manifest = shards.Manifest.read(Path(atomic.read_json(run_dir / "staged.json")["path"]))
    clients = read_clients(manifest)
    log.info("%d clients, %d words; %s", len(clients), sum(len(w) for _, w in clients), cfg)
    started = time.perf_counter()
    tables, results = measure(cfg, clients)
    results["seconds"] = round(time.perf_counter() - started, 3)
    atomic.write_json(run_dir / HEAVY_HITTERS_FILE, {"config": cfg.to_dict(), **tables, "results": results})
    atomic.write_json(run_dir / RESULTS_FILE, results)
    log.info("Heavy hitters measured: %s", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.heavy_hitters", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s [fedflow] %(message)s")
    from trainer import lifecycle

    lifecycle.install()  # every exit path ends worker_binary
    run(args.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
