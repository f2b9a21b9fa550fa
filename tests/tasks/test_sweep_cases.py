"""A sweep's ``cases:`` (points given whole, alone or crossed with a grid): the points, their labels, the
validation as strict as the grid's, the optimizers recipe built on them, and the comparison of a cases
sweep (the swept fields with their defaults, the per-round curves)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tasks import atomic, metrics_log, privacy, recipes, reference, steps, sweep, sweep_compare, tracking
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths

BASE = """
description: server optimizers
schedule: null
base:
  num_clients: 8
  clients_per_round: 4
  rounds: 2
  rounds_per_chunk: 2
  experiment_name: sweep-cases
  registered_model_name: sweep-cases-digits
"""
CASES = """
cases:
  - {algorithm: fedavg, server_learning_rate: 1.0}
  - {algorithm: fedavg, server_learning_rate: 0.05, server_momentum: 0.9}
  - {algorithm: fedadam, server_learning_rate: 0.01}
"""


def write(tmp_path: Path, text: str, name: str = "cases") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_cases_alone_are_the_points_in_file_order_labelled_by_what_each_sets(tmp_path):
    points = sweep.load(write(tmp_path, BASE + CASES)).points()
    assert [p["label"] for p in points] == [
        "algorithm=fedavg, server_learning_rate=1.0",
        "algorithm=fedavg, server_learning_rate=0.05, server_momentum=0.9",
        "algorithm=fedadam, server_learning_rate=0.01",
    ]
    # every point lists every swept field; one a case leaves out runs at the config's default
    assert points[2]["grid"] == {"algorithm": "fedadam", "server_learning_rate": 0.01, "server_momentum": 0.0}
    assert "server_momentum" not in points[2]["params"] and points[2]["params"]["rounds"] == 2


def test_cases_with_a_grid_cross_every_case_with_every_grid_point_cases_outer(tmp_path):
    spec = sweep.load(write(tmp_path, BASE + CASES + "grid:\n  seed: [0, 1]\n"))
    assert spec.swept_fields == ["algorithm", "server_learning_rate", "server_momentum", "seed"]
    assert [p["label"] for p in spec.points()[:3]] == [
        "algorithm=fedavg, server_learning_rate=1.0, seed=0",
        "algorithm=fedavg, server_learning_rate=1.0, seed=1",
        "algorithm=fedavg, server_learning_rate=0.05, server_momentum=0.9, seed=0",
    ]
    assert len(spec.points()) == 6


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "Got missing ['grid or cases']"),
        ("cases: {algorithm: fedadam}\n", "cases must be a non-empty list of mappings"),
        ("cases: []\n", "cases must be a non-empty list of mappings"),
        ("cases: [fedadam]\n", "cases[0] must be a non-empty mapping"),
        ("cases: [{}]\n", "cases[0] must be a non-empty mapping"),
        ("cases: [{algoritm: fedadam}]\n", "unknown experiment field 'algoritm'. Did you mean 'algorithm'?"),
        ("cases: [{seed: [1, 2]}]\n", "cases[0]: seed must be one value (a case is one point)"),
        ("cases: [{seed: 1}, {seed: 2}, {seed: 1}]\n", "cases[2] repeats cases[0] (seed=1)"),
        ("cases: [{rounds: 3}]\n", "['rounds'] set in both base and cases"),
        ("cases: [{seed: 1}]\ngrid: {seed: [2, 3]}\n", "['seed'] set in both grid and cases"),
        ("cases: [{experiment_name: other}]\n", "experiment_name cannot vary"),
        (
            "cases: ["
            + ", ".join(f"{{seed: {i}}}" for i in range(20))
            + "]\ngrid: {local_epochs: "
            + str(list(range(1, 15)))
            + "}\n",
            "20 cases x the grid's points = 280 points, more than 256",
        ),
    ],
    ids=[
        "neither",
        "mapping",
        "empty",
        "scalar-case",
        "empty-case",
        "typo",
        "list-value",
        "duplicate",
        "base-clash",
        "grid-clash",
        "experiment",
        "too-big",
    ],
)
def test_malformed_cases_are_refused_with_the_problem(tmp_path, extra, expected):
    path = write(tmp_path, BASE + extra)
    with pytest.raises(sweep.SweepFileError) as e:
        sweep.load(path)
    assert expected in str(e.value) and str(path) in str(e.value)


def test_an_invalid_case_is_named_with_the_file_the_point_and_the_field(tmp_path):
    path = write(tmp_path, BASE + "cases:\n  - {algorithm: fedavg}\n  - {algorithm: fedyogi, server_momentum: 0.9}\n")
    with pytest.raises(sweep.SweepFileError) as e:
        sweep.load(path)
    assert "1 of 2 grid points are invalid" in str(e.value)
    assert (
        "grid point p01 (algorithm=fedyogi, server_momentum=0.9): server_momentum applies to the server's SGD"
        in str(e.value)
    )


def test_overrides_cannot_change_a_case_field(tmp_path):
    with pytest.raises(sweep.SweepFileError, match=r"not grid parameters. Got \['server_learning_rate'\]"):
        sweep.load(write(tmp_path, BASE + CASES), overrides={"server_learning_rate": 0.5})


def test_the_optimizers_recipe_is_a_cases_sweep_whose_checks_address_its_points():
    recipe = recipes.load("optimizers")
    assert recipe.is_sweep and not recipe.grid
    assert recipes.trigger("optimizers", "tiny") == (
        "sweep_recipe_optimizers",
        {"recipe_variant": "tiny", "overrides": {}},
    )
    points = sweep.from_recipe(recipe, "tiny").points()
    assert [p["params"]["algorithm"] for p in points] == ["fedavg", "fedavg", "fedadam", "fedyogi", "fedadagrad"]
    assert points[1]["params"]["server_momentum"] == 0.9 and points[1]["params"]["rounds"] == 2
    labels = {p["label"] for p in points}
    for check in recipe.checks:
        assert reference._POINT.fullmatch(check["value"])["label"] in labels


def test_a_recipe_check_naming_a_point_the_cases_do_not_have_is_refused(tmp_path, monkeypatch):
    text = (recipes.recipes_dir() / "optimizers.yaml").read_text()
    (tmp_path / "optimizers.yaml").write_text(
        text.replace("point[algorithm=fedavg, server_learning_rate=1.0]", "point[algorithm=fedsgd]", 1)
    )
    monkeypatch.setenv("FEDFLOW_RECIPES_DIR", str(tmp_path))
    with pytest.raises(recipes.RecipeError, match=r"must be point\[<label>\]"):
        recipes.load("optimizers")


def test_a_recipe_field_both_in_cases_and_in_its_settings_is_refused(tmp_path, monkeypatch):
    text = (recipes.recipes_dir() / "optimizers.yaml").read_text()
    (tmp_path / "optimizers.yaml").write_text(text.replace("  model: mlp\n", "  model: mlp\n  server_momentum: 0.5\n"))
    monkeypatch.setenv("FEDFLOW_RECIPES_DIR", str(tmp_path))
    with pytest.raises(recipes.RecipeError, match=r"\['server_momentum'\] are in both the grid and the settings"):
        recipes.load("optimizers")


# -- the comparison of a cases sweep ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory):
    return tmp_path_factory.mktemp("mlruns")  # one sqlite store per module: creating its schema is the slow part


@pytest.fixture
def store(monkeypatch, mlruns, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FEDFLOW_MLRUNS_DIR", str(mlruns))
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    return tracking.client()


def finish(point: dict, losses: list[float], accuracy: float) -> None:
    """What a finished point leaves: its run (resolve), per-round metrics, final.json, the outcome."""
    c = tracking.client()
    tags = {"mlflow.parentRunId": point["parent_run_id"], "fedflow.sweep_point": f"p{point['index']:02d}"}
    handle = steps.resolve(point["params"], dag_id=point["dag_id"], run_id=point["run_id"], tags=tags)
    run = RunPaths(Path(handle["run_dir"]))
    for i, loss in enumerate(losses, start=1):
        metrics_log.append_row(
            run.metrics,
            {
                "round": i,
                "train_loss": loss,
                "bits_per_parameter": 32.0,
                **({"test_accuracy": accuracy} if i == len(losses) else {}),
            },
        )
    atomic.write_json(run.final, {"round": len(losses), "test_accuracy": accuracy, "test_loss": losses[-1]})
    name = point["params"]["registered_model_name"]
    if not c.search_registered_models(f"name = '{name}'"):
        c.create_registered_model(name)
    version = c.create_model_version(name, source=str(run.root), run_id=handle["mlflow_run_id"]).version
    atomic.write_json(
        Path(point["sweep_dir"]) / "points" / f"p{point['index']:02d}.json",
        {
            "status": "succeeded",
            "registered_model_name": name,
            "version": version,
            "mlflow_run_id": handle["mlflow_run_id"],
        },
    )


def test_the_comparison_of_a_cases_sweep_lists_every_swept_field_and_plots_curves_by_round(tmp_path, store):
    points = sweep.plan(write(tmp_path, BASE + CASES), dag_id="sweep_cases", run_id="manual__1")
    for point, accuracy in zip(points, (0.7, 0.8, 0.75), strict=True):
        finish(point, [2.0, 1.5, 1.0 + point["index"] / 10], accuracy)
    result = sweep_compare.compare(dag_id="sweep_cases", run_id="manual__1")
    assert result["champion"]["label"] == "algorithm=fedavg, server_learning_rate=0.05, server_momentum=0.9"
    out = Path(points[0]["sweep_dir"]) / "comparison"
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["algorithm"], r["server_learning_rate"], r["server_momentum"]) for r in rows] == [
        ("fedavg", "1.0", "0.0"),
        ("fedavg", "0.05", "0.9"),
        ("fedadam", "0.01", "0.0"),
    ]
    assert (out / "curves_by_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parent = store.get_run(points[0]["parent_run_id"])
    assert "comparison/curves_by_round.png" in {a.path for a in store.list_artifacts(parent.info.run_id, "comparison")}
    assert parent.data.params["cases"].startswith('[{"algorithm": "fedavg", "server_learning_rate": 1.0}')


# -- calibration at resolve (tasks/privacy.py; here for this module's MLflow store) -----------------------


def test_resolve_freezes_the_calibrated_noise_and_tags_the_run_with_it(store):
    params = {
        "num_clients": 100,
        "clients_per_round": 15,
        "client_sampling": "poisson",
        "aggregator": "dp",
        "rounds": 50,
        "rounds_per_chunk": 50,
        "dp_epsilon_budget": 0,
        "dp_target_epsilon": 4.0,
        "experiment_name": "calibration",
    }
    handle = steps.resolve(params, dag_id="federated_training", run_id="manual__calibrated")
    frozen = json.loads(RunPaths.for_run("federated_training", "manual__calibrated").config.read_text())
    expected = privacy.calibrated(ExperimentConfig(**params)).noise_multiplier
    assert frozen["noise_multiplier"] == expected and frozen["dp_target_epsilon"] == 4.0
    run = store.get_run(handle["mlflow_run_id"])
    assert run.data.params["noise_multiplier"] == str(expected)
    assert run.data.tags["fedflow.dp_calibrated_noise_multiplier"] == f"{expected:g}"
    assert float(run.data.tags["fedflow.dp_planned_epsilon"]) <= 4.0


def test_a_check_can_address_the_first_round_that_has_a_value(tmp_path):
    run = RunPaths(tmp_path / "run")
    run.root.mkdir()
    for row in ({"round": 1, "bits_sent": 3}, {"round": 2, "train_loss": 2.0}, {"round": 3, "train_loss": 1.5}):
        metrics_log.append_row(run.metrics, row)
    values = reference.RunValues(run)
    assert values.get("first.train_loss") == 2.0 and values.get("last.train_loss") == 1.5
    check = {
        "name": "loss_fell",
        "claim": "c",
        "kind": "greater",
        "value": "first.train_loss",
        "other": "last.train_loss",
    }
    assert reference.evaluate([check], values)[0]["result"] == "pass"
