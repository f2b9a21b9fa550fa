"""Every recipe that trains on the digits runs at its ``tiny`` size, in this one TensorFlow process: each run
(or each sweep point) is staged, trained to its last round (which exports and makes the recipe's measurement)
and its reference checks are evaluated as the DAG's ``reference_check`` / the sweep's ``compare`` do. The tiny
runs are too short for some of the tutorials' claims to hold, so what must hold is that every check finds its
values; the default sizes' outcomes are in the README.

The recipes on other data run end to end elsewhere: text_generation (tests/e2e/test_text_generation_run.py,
pretraining and the registry) and reconstruction (tests/e2e/test_recipe_reconstruction.py, MovieLens); the
analytics recipe private_heavy_hitters trains nothing (tests/trainer/test_heavy_hitters.py,
tests/e2e/test_recipe_private_heavy_hitters.py); sparse_federated_learning trains on the plays
(tests/trainer/test_sparse_select.py, tests/e2e/test_recipe_sparse.py)."""

from __future__ import annotations

import pytest
import tensorflow_federated as tff

from tasks import atomic, privacy, recipes, reference, sweep
from tasks import stage as staging
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from trainer import program

ELSEWHERE = {"text_generation", "reconstruction", "private_heavy_hitters", "sparse_federated_learning"}
DIGITS_RECIPES = [name for name in recipes.names() if name not in ELSEWHERE]


def _train_tiny(params, root) -> RunPaths:
    """resolve -> stage -> every chunk, as the DAG does (without Airflow and MLflow)."""
    cfg = privacy.calibrated(ExperimentConfig.from_mapping(recipes.apply(params)))
    cfg.check_trainable()
    run = RunPaths(root)
    run.root.mkdir(parents=True)
    atomic.write_json(run.config, cfg.to_dict())
    staged = staging.stage_dataset(cfg)
    atomic.write_json(run.staged, {"path": str(staged.path), "fingerprint": staged.fingerprint})
    try:
        for chunk in range(cfg.num_chunks):
            program.train_until_round(run.root, cfg.chunk_target_round(chunk))
    finally:  # a recipe may set another TFF context (secure aggregator, concurrency limit): later tests get TFF's own
        tff.backends.native.set_sync_local_cpp_execution_context()
    return run


def test_the_recipes_elsewhere_still_exist():
    assert ELSEWHERE <= set(recipes.names())


@pytest.mark.parametrize("name", DIGITS_RECIPES)
def test_every_recipe_runs_at_its_tiny_size_and_every_check_finds_its_values(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    recipe = recipes.load(name)
    if recipe.grid or recipe.cases:
        points = sweep.from_recipe(recipe, "tiny").points()
        values = reference.SweepValues({p["label"]: reference.RunValues(_train_tiny(p["params"], tmp_path / f"p{i}"))
                                        for i, p in enumerate(points)})
    else:
        values = reference.RunValues(_train_tiny({"recipe": name, "recipe_variant": "tiny"}, tmp_path / "run"))
    rows = reference.evaluate(recipe.checks, values)
    missing = [r for r in rows if r["measured"].startswith("missing")]
    assert not missing, missing
    assert len(rows) == len(recipe.checks) > 0
