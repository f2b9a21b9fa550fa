"""The recommended-aggregators recipe: a corrupted client's update (hybrid engine), the update norms adaptive
clipping tracks, and the recipe's measurements (trainer/client_updates.py, trainer/recommended_aggregators.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import atomic, metrics_log
from tasks.config import ExperimentConfig
from trainer import client_updates, program, recipe_results, recommended_aggregators


def test_the_corrupted_clients_are_drawn_from_seed_and_round_and_scaled():
    cfg = ExperimentConfig(engine="hybrid", corrupt_clients=2, corrupt_update_scale=1e4)
    scales = client_updates.update_scales(cfg, 3, 10)
    assert sorted(scales.tolist()) == [1.0] * 8 + [1e4] * 2
    assert np.array_equal(scales, client_updates.update_scales(cfg, 3, 10))  # a resumed run corrupts the same
    drawn = {tuple(client_updates.update_scales(cfg, r, 10)) for r in range(1, 20)}
    assert len(drawn) > 1  # not always the same positions
    assert client_updates.update_scales(cfg, 1, 1).tolist() == [1e4]  # fewer sampled (Poisson) than corrupt_clients
    assert client_updates.update_scales(ExperimentConfig(), 1, 10) is None


def test_norm_measurements_are_the_empirical_quantile_median_and_max_of_global_l2_norms():
    per_client = [
        [np.array([3.0, 0.0]), np.array([4.0])],
        [np.array([0.0, 1.0]), np.array([0.0])],
        [np.array([6.0, 8.0]), np.array([0.0])],
    ]  # norms 5, 1, 10
    measured = client_updates.norm_measurements(per_client, 0.5)
    assert measured == {
        "update_norm_quantile": 5.0,
        "update_norm_quantile_level": 0.5,
        "update_norm_median": 5.0,
        "update_norm_max": 10.0,
    }
    assert client_updates.norm_measurements(per_client, 1.0)["update_norm_quantile"] == 10.0
    assert client_updates.norm_measurements([], 0.8) == {}
    assert client_updates.clip_target_quantile(ExperimentConfig(aggregator="robust")) == 0.8
    assert (
        client_updates.clip_target_quantile(
            ExperimentConfig(aggregator="dp", dp_target_unclipped_quantile=0.3, clients_per_round=20)
        )
        == 0.3
    )


def test_clip_tracking_is_the_factor_between_the_clip_and_the_quantile():
    rows = [
        {
            "round": r,
            "aggregator/zeroing/clipping_norm": clip,
            "update_norm_quantile": 1.0,
            "update_norm_quantile_level": 0.8,
            "aggregator/zeroing/clipped_fraction": 0.5,
        }
        for r, clip in enumerate([4.0, 4.0, 4.0, 4.0, 4.0, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5], start=1)
    ]
    tracked = recommended_aggregators.clip_tracking(rows)
    assert tracked["clip_to_quantile_factor_first"] == pytest.approx(4.0)
    assert tracked["clip_to_quantile_factor_last"] == pytest.approx(2.0)  # below the quantile: still a factor >= 1
    assert tracked["clip_to_quantile_factor_max"] == pytest.approx(4.0)
    assert tracked["unclipped_fraction_last"] == 0.5
    dp_row = {
        "aggregator/zeroing/dp_query_metrics/clip": 1.0,
        "update_norm_quantile": 1.0,
        "update_norm_quantile_level": 0.5,
    }
    assert recommended_aggregators.clip_tracking([dp_row])["clip_to_quantile_factor_last"] == 1.0
    assert recommended_aggregators.clip_tracking([{"round": 1, "train_loss": 1.0}]) == {}


def test_a_corrupt_update_scale_of_one_trains_exactly_like_no_fault_and_reports_update_norms(make_run):
    """The fault's path (each client's update through TFF's mean process) equals the in-graph mean."""
    honest = make_run("honest", engine="hybrid", rounds=2, rounds_per_chunk=2)
    scaled = make_run(
        "scaled_by_one", engine="hybrid", corrupt_clients=1, corrupt_update_scale=1.0, rounds=2, rounds_per_chunk=2
    )
    program.train_until_round(honest.root, 2)
    program.train_until_round(scaled.root, 2)
    for a, b in zip(
        program.load_experiment(honest.root).checkpoints.load_latest().leaves,
        program.load_experiment(scaled.root).checkpoints.load_latest().leaves,
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
    row = metrics_log.read_rows(scaled.metrics)[-1]
    assert 0 < row["update_norm_median"] <= row["update_norm_quantile"] <= row["update_norm_max"]
    assert row["update_norm_quantile_level"] == 0.8


def test_the_robust_aggregator_zeroes_a_corrupted_update_that_the_plain_mean_takes(make_run):
    robust = make_run("robust", engine="hybrid", aggregator="robust", corrupt_clients=1, rounds=2, rounds_per_chunk=2)
    mean = make_run("mean", engine="hybrid", corrupt_clients=1, rounds=2, rounds_per_chunk=2)
    program.train_until_round(robust.root, 2)
    program.train_until_round(mean.root, 2)
    robust_rows, mean_rows = metrics_log.read_rows(robust.metrics), metrics_log.read_rows(mean.metrics)
    assert [r["aggregator/zeroed_count"] for r in robust_rows] == [1.0, 1.0]
    assert robust_rows[0]["aggregator/zeroed_fraction"] == pytest.approx(1 / 3)
    # The corrupted client's update is 1e4 times an honest one: it dominates the norms it is measured among.
    assert mean_rows[0]["update_norm_max"] > 1000 * mean_rows[0]["update_norm_median"]
    assert mean_rows[-1]["train_loss"] > 10 * robust_rows[-1]["train_loss"]


def test_a_corrupted_run_on_the_tff_engine_is_refused_naming_the_fix(make_run):
    run = make_run(engine="hybrid", corrupt_clients=1, rounds=1, rounds_per_chunk=1)
    with pytest.raises(program.Error, match="hybrid engine only. Got engine='tff'. Fix: engine='hybrid'"):
        program.train_until_round(run.root, 1, engine="tff")


@pytest.mark.parametrize("aggregator", ["mean", "robust"])
def test_the_recipe_measures_the_corrupted_rerun_and_the_clip_tracking(make_run, aggregator):
    run = make_run(
        aggregator,
        recipe="recommended_aggregators",
        engine="hybrid",
        aggregator=aggregator,
        rounds=3,
        rounds_per_chunk=3,
        eval_every=3,
        client_learning_rate=0.2,
    )
    program.train_until_round(run.root, 3)  # the last chunk exports, which measures the recipe
    results = atomic.read_json(run.root / recipe_results.RESULTS_FILE)
    final = atomic.read_json(run.final)
    assert results["corrupted_run_corrupted_updates"] == 3 and results["corrupted_run_update_scale"] == 1e4
    if aggregator == "mean":
        assert results["corrupted_run_test_accuracy"] < final["test_accuracy"] - 0.2
        assert "clip_to_quantile_factor_last" not in results  # the plain mean neither clips nor measures norms
    else:
        assert results["corrupted_run_zeroed_updates"] >= 1 and results["zeroed_updates"] == 0
        assert abs(results["corrupted_run_test_accuracy"] - final["test_accuracy"]) <= 0.1
        assert results["clip_to_quantile_factor_last"] >= 1.0 and results["update_norm_quantile_level"] == 0.8
