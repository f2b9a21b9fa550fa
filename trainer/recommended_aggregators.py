"""The recommended-aggregators recipe's measurements (TFF tutorial tuning_recommended_aggregators).

Each grid point of ``recipes/recommended_aggregators.yaml`` trains FedAvg with one aggregator; after its
last round the trainer measures, for the reference check (``results.<key>``):

- **Clip tracking** (every point whose aggregator clips adaptively): the adaptive clip norm TFF reported
  against the empirical quantile it aims at (``update_norm_quantile``: the 0.8 quantile of the round's
  client update norms for the robust aggregator; DP's ``dp_target_unclipped_quantile``), as the ratio
  clip / quantile over the run's first and last :data:`TRACKING_ROUNDS` rounds.
- **A corrupted client** (the points of :data:`CORRUPTED_AGGREGATORS`): the run's rounds again from its
  round-0 weights, same clients and batches, with ``corrupt_clients`` (default 1) of each round's
  clients sending their update multiplied by ``corrupt_update_scale`` (1e4), on the hybrid engine
  (trainer/client_updates.py); the final test accuracy and how many corrupted updates the aggregator's
  zeroing caught. A re-run rather than grid points: the sweep's grid is a cross product, and corrupting
  all five aggregators would double the sweep for two numbers the tutorial's claim needs.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger("fedflow.trainer")

CORRUPTED_AGGREGATORS = ("mean", "robust")
TRACKING_ROUNDS = 5
# TFF's keys for the adaptive clip norm: robust.clipping_factory's, and the DP query's (adaptive clipping).
_CLIP_SUFFIXES = ("/clipping_norm", "/dp_query_metrics/clip")


def measure(exp) -> dict[str, float]:
    """The recipe's measurements for this grid point (see the module docstring)."""
    from tasks import metrics_log  # noqa: PLC0415

    rows = metrics_log.read_rows(exp.paths.metrics)
    results = clip_tracking(rows)
    if any("aggregator/zeroed_count" in r for r in rows):  # the run's own (honest) updates zeroed, if it zeroes
        results["zeroed_updates"] = int(sum(r.get("aggregator/zeroed_count", 0) for r in rows))
    if exp.cfg.aggregator in CORRUPTED_AGGREGATORS:
        results.update(corrupted_run(exp))
    return results


def clip_key(row: dict) -> str | None:
    """The metrics key holding the round's adaptive clip norm, if the aggregator reports one."""
    return next((k for k in sorted(row) if k.startswith("aggregator/") and k.endswith(_CLIP_SUFFIXES)), None)


def clip_tracking(rows: list[dict]) -> dict[str, float]:
    """How far the adaptive clip norm is from the empirical quantile of update norms it aims at, as a
    factor >= 1 (1 = on the quantile): the geometric mean of clip / quantile over the first and the last
    :data:`TRACKING_ROUNDS` rounds, and the largest single-round factor; the quantile's own first and last
    values (how far it moved meanwhile); the unclipped fraction of the last rounds. Empty when the
    aggregator has no adaptive clip or the engine measured no update norms (the tff engine)."""
    paired = [
        (r[key], r["update_norm_quantile"], r) for r in rows if (key := clip_key(r)) and r.get("update_norm_quantile")
    ]
    if not paired:
        return {}
    ratios = np.log([clip / quantile for clip, quantile, _ in paired])
    results = {
        "clip_to_quantile_factor_first": float(np.exp(abs(ratios[:TRACKING_ROUNDS].mean()))),
        "clip_to_quantile_factor_last": float(np.exp(abs(ratios[-TRACKING_ROUNDS:].mean()))),
        "clip_to_quantile_factor_max": float(np.exp(np.abs(ratios).max())),
        "clip_norm_first": float(paired[0][0]),
        "clip_norm_last": float(paired[-1][0]),
        "update_norm_quantile_first": float(paired[0][1]),
        "update_norm_quantile_last": float(paired[-1][1]),
        "update_norm_quantile_level": float(paired[-1][2]["update_norm_quantile_level"]),
    }
    clipped = [v for _, _, r in paired[-TRACKING_ROUNDS:] for k, v in r.items() if k.endswith("/clipped_fraction")]
    if clipped:
        results["unclipped_fraction_last"] = 1.0 - float(np.mean(clipped))
    return results


def corrupted_run(exp) -> dict[str, float]:
    """The run's rounds again with corrupted clients (module docstring): final test accuracy, corrupted
    updates sent, updates the aggregator zeroed (any client's: compare the honest run's ``zeroed_updates``),
    and rounds whose aggregate the server rejected as non-finite."""
    from trainer import algorithms, models, program  # noqa: PLC0415 - program imports this module's users

    cfg = dataclasses.replace(exp.cfg, engine="hybrid", corrupt_clients=exp.cfg.corrupt_clients or 1)
    # Every TFF process before the hybrid's and the evaluation's Keras models (FACTS.md: a later model_fn
    # call leaves earlier Keras models invalid).
    process = algorithms.build_learning_process(cfg, exp.model_fn)
    start = exp.process.get_model_weights(program.initial_state(exp))  # the run's own round-0 weights
    state = process.set_model_weights(process.initialize(), start)
    all_ids = exp.manifest.client_ids("train")
    client_ids = all_ids[: len(all_ids) - cfg.heldout_clients]
    clients = {cid: program.read_client(exp, "train", cid) for cid in client_ids}
    index = {cid: i for i, cid in enumerate(all_ids)}
    rerun = dataclasses.replace(exp, cfg=cfg, process=process)
    runner = program.RoundRunner(rerun, "hybrid", clients, index, client_ids)
    sent = zeroed = rejected = 0
    try:
        for round_num in range(1, cfg.rounds + 1):
            sampled = runner.sampled(round_num)
            if not sampled:
                continue
            state, metrics = runner.next(state, round_num, cfg.rounds)
            row = program.round_metrics(metrics)
            sent += min(cfg.corrupt_clients, len(sampled))
            zeroed += int(row.get("aggregator/zeroed_count", 0))
            rejected += int(row.get("update_non_finite", 0))
    finally:
        runner.close()
    shape = program.model_input_shape(exp.manifest)
    rerun = dataclasses.replace(rerun, eval_model=models.build_keras_model(cfg.model, shape, exp.manifest.num_classes))
    accuracy = program.evaluate_central(rerun, state, program.read_split(exp, "test"))["test_accuracy"]
    log.info(
        "Corrupted re-run (%s, %d client(s) x %g per round): test accuracy %.4f, %d of %d corrupted updates zeroed",
        cfg.aggregator,
        cfg.corrupt_clients,
        cfg.corrupt_update_scale,
        accuracy,
        zeroed,
        sent,
    )
    return {
        "corrupted_run_test_accuracy": accuracy,
        "corrupted_run_corrupted_updates": sent,
        "corrupted_run_zeroed_updates": zeroed,
        "corrupted_run_rejected_rounds": rejected,
        "corrupted_run_update_scale": cfg.corrupt_update_scale,
    }
