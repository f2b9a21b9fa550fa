"""The measurement of the recipe ``build_your_own_algorithm`` (trainer/recipe_results.py MEASUREMENTS):
the tutorials' algorithms (trainer/tutorial_algorithms.py) against TFF's built-ins, round by round.

Each pair runs the run's rounds with the run's clients and batches, from the run's round-0 weights; before
every round the built-in is given the tutorial algorithm's current weights (its own optimizer state carries
on), so the difference measured is one round's, not round-off accumulated over many (FACTS.md).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow_federated as tff

from tasks import metrics_log
from trainer import algorithms, tutorial_algorithms


def per_round_difference(
    exp, ours: tff.learning.templates.LearningProcess, builtin: tff.learning.templates.LearningProcess
) -> dict[str, float]:
    """Max over rounds of |weight difference| and |train-loss difference| between ``ours`` and ``builtin``."""
    from trainer import program  # noqa: PLC0415 - program imports recipe_results, which imports this module

    ids = exp.manifest.client_ids("train")
    training_ids = ids[: len(ids) - exp.cfg.heldout_clients]
    clients = {cid: program.read_client(exp, "train", cid) for cid in training_ids}
    index = {cid: i for i, cid in enumerate(ids)}
    start = exp.process.get_model_weights(program.initial_state(exp))
    state = ours.set_model_weights(ours.initialize(), start)
    other = builtin.initialize()
    weight_diff = loss_diff = 0.0
    for round_num in range(1, exp.cfg.rounds + 1):
        datasets = [
            program.client_dataset(exp, clients[cid], index[cid], round_num)
            for cid in program.sample_clients(exp.cfg, round_num, training_ids)
        ]
        other = builtin.set_model_weights(other, ours.get_model_weights(state))
        mine, theirs = ours.next(state, datasets), builtin.next(other, datasets)
        state, other = mine.state, theirs.state
        pairs = zip(ours.get_model_weights(state).trainable, builtin.get_model_weights(other).trainable, strict=True)
        weight_diff = max(weight_diff, *(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs))
        loss_diff = max(
            loss_diff,
            abs(
                float(mine.metrics["client_work"]["train"]["loss"])
                - float(theirs.metrics["client_work"]["train"]["loss"])
            ),
        )
    return {"max_weight_difference": weight_diff, "max_loss_difference": loss_diff}


def build_your_own_algorithm(exp) -> dict[str, float]:
    """The hand-built FedAvg vs ``build_unweighted_fed_avg``; the composed gradient-clipping FedAvg with the clip
    at infinity vs ``build_weighted_fed_avg`` (same optimizers, per round); and, from the run's own rows (the
    run trains the clipping process), the largest local gradient norm before and after clipping."""
    cfg = exp.cfg
    client, server = algorithms.client_optimizer(cfg), algorithms.server_optimizer(cfg)
    builtins = tff.learning.algorithms
    hand_built = per_round_difference(
        exp,
        tutorial_algorithms.build_hand_built_fed_avg(exp.model_fn, client_optimizer=client, server_optimizer=server),
        builtins.build_unweighted_fed_avg(
            exp.model_fn, client_optimizer_fn=client, server_optimizer_fn=server, loop_implementation=algorithms.LOOP
        ),
    )
    unclipped = per_round_difference(
        exp,
        tutorial_algorithms.build_fed_avg_with_gradient_clipping(
            exp.model_fn, client_optimizer=client, server_optimizer=server, clip_norm=math.inf
        ),
        builtins.build_weighted_fed_avg(
            exp.model_fn, client_optimizer_fn=client, server_optimizer_fn=server, loop_implementation=algorithms.LOOP
        ),
    )
    rows = metrics_log.read_rows(exp.paths.metrics)
    before = [
        r["client_work/max_gradient_norm_before_clip"] for r in rows if "client_work/max_gradient_norm_before_clip" in r
    ]
    after = [
        r["client_work/max_gradient_norm_after_clip"] for r in rows if "client_work/max_gradient_norm_after_clip" in r
    ]
    return {
        "hand_built_vs_unweighted_fed_avg_max_weight_difference": hand_built["max_weight_difference"],
        "hand_built_vs_unweighted_fed_avg_max_loss_difference": hand_built["max_loss_difference"],
        "unclipped_vs_weighted_fed_avg_max_weight_difference": unclipped["max_weight_difference"],
        "unclipped_vs_weighted_fed_avg_max_loss_difference": unclipped["max_loss_difference"],
        "client_gradient_clip": cfg.client_gradient_clip,
        "max_gradient_norm_before_clip": max(before, default=float("nan")),
        "max_gradient_norm_after_clip": max(after, default=float("nan")),
    }
