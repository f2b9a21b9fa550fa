"""Recipes: every committed recipe is a valid experiment in each variant; params override a recipe only
where they differ from the config's defaults; malformed recipe files fail naming the file and the fix;
the reference check's rules."""

from __future__ import annotations

import json

import pytest
import yaml

from tasks import recipes, reference
from tasks.config import ConfigError, ExperimentConfig
from tasks.paths import RunPaths

MINIMAL = {
    "tutorial": "some_tutorial", "title": "t", "description": "d", "data": "digits",
    "config": {"model": "mlp", "rounds": 6},
    "variants": {"tiny": {"rounds": 2}},
    "checks": [{"name": "falls", "claim": "loss falls", "kind": "decreasing", "value": "rows.train_loss"}],
}


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_RECIPES_DIR", str(tmp_path))

    def write(name: str, content) -> None:
        (tmp_path / f"{name}.yaml").write_text(content if isinstance(content, str) else yaml.safe_dump(content))

    return write


@pytest.mark.parametrize("name", recipes.names("training"))
def test_every_committed_recipe_is_a_valid_experiment_in_each_variant(name):
    recipe = recipes.load(name)
    for variant in ("default", "full", "tiny"):
        cfg = ExperimentConfig.from_mapping(recipes.apply({"recipe": name, "recipe_variant": variant}))
        assert cfg.recipe == name and cfg.recipe_variant == variant
        assert {k: getattr(cfg, k) for k in recipe.settings(variant)} == recipe.settings(variant)


def test_a_recipe_fills_the_defaults_and_changed_params_override_it(recipe_dir):
    recipe_dir("demo", MINIMAL)
    defaults = ExperimentConfig().to_dict()
    form = {**defaults, "recipe": "demo", "custom_aggregator": None}  # what the trigger form sends
    assert ExperimentConfig.from_mapping(recipes.apply(form)).model == "mlp"
    assert ExperimentConfig.from_mapping(recipes.apply({**form, "model": "softmax", "rounds": 9})).rounds == 9
    tiny = recipes.apply({**form, "recipe_variant": "tiny"})
    assert tiny["rounds"] == 2 and tiny["model"] == "mlp"
    assert recipes.apply({"rounds": 3}) == {"rounds": 3}  # no recipe: unchanged
    assert recipes.apply({"recipe": "none", "rounds": 3}) == {"recipe": "none", "rounds": 3}
    with pytest.raises(ConfigError, match="Unknown parameter"):  # a typo still fails, naming the key
        ExperimentConfig.from_mapping(recipes.apply({"recipe": "demo", "roundz": 3}))


def test_overrides_set_a_field_back_to_the_configs_default_over_the_recipe(recipe_dir):
    recipe_dir("demo", {**MINIMAL, "config": {"model": "mlp", "rounds": 6, "server_momentum": 0.9}})
    form = {**ExperimentConfig().to_dict(), "recipe": "demo", "custom_aggregator": None}
    assert ExperimentConfig.from_mapping(recipes.apply(form)).server_momentum == 0.9  # the form cannot undo it
    undone = ExperimentConfig.from_mapping(recipes.apply({**form, "overrides": {"server_momentum": 0.0}}))
    assert undone.server_momentum == 0.0 and undone.model == "mlp" and undone.recipe == "demo"
    assert recipes.apply({"rounds": 3, "overrides": {"rounds": 4}}) == {"rounds": 4}  # no recipe: applied too
    with pytest.raises(recipes.RecipeError, match=r"overrides sets \['roundz'\].*close: \['rounds'\]"):
        recipes.apply({**form, "overrides": {"roundz": 4}})
    with pytest.raises(recipes.RecipeError, match=r"overrides sets \['recipe'\]"):
        recipes.apply({**form, "overrides": {"recipe": "other"}})
    with pytest.raises(recipes.RecipeError, match="must be a JSON object"):
        recipes.apply({**form, "overrides": "rounds=4"})


def test_an_unknown_recipe_names_the_recipes_and_the_closest(recipe_dir):
    recipe_dir("image_demo", MINIMAL)
    with pytest.raises(recipes.RecipeError, match=r"Unknown recipe 'image_dem'.*\['image_demo'\].*Did you mean"):
        recipes.load("image_dem")


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "red"}, r"unknown keys \['colour'\]"),
    ({"checks": []}, "checks must be a non-empty list"),
    ({"variants": {"huge": {}}}, "variants must map some of"),
    ({"config": {"roundz": 3}}, r"\['roundz'\] are not experiment settings"),
    ({"variants": {"tiny": {"rounds": 0}}}, r"\(tiny\): rounds must be >= 1"),
    ({"checks": [{"name": "x", "claim": "c", "kind": "bigger", "value": "rows.a"}]}, "kind must be one of"),
    ({"checks": [{"name": "x", "claim": "c", "kind": "at_least", "value": "rows.a"}]}, r"needs \['threshold'\]"),
    ({"checks": [{"name": "x", "claim": "c", "kind": "decreasing", "value": "metrics.a"}]}, "must start with one of"),
])
def test_a_malformed_recipe_file_is_refused_naming_the_file_and_the_problem(recipe_dir, change, message):
    recipe_dir("bad", {**MINIMAL, **change})
    with pytest.raises(recipes.RecipeError, match=message) as raised:
        recipes.load("bad")
    assert "bad.yaml" in str(raised.value)


def test_invalid_yaml_is_refused(recipe_dir):
    recipe_dir("broken", "config: [unclosed")
    with pytest.raises(recipes.RecipeError, match="not valid YAML"):
        recipes.load("broken")


def _run(tmp_path, rows, final=None, results=None) -> RunPaths:
    run = RunPaths(tmp_path / "run")
    run.root.mkdir(parents=True)
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if final is not None:
        run.final.write_text(json.dumps(final))
    if results is not None:
        (run.root / reference.RESULTS_FILE).write_text(json.dumps(results))
    return run


def test_the_reference_rules_pass_and_fail_on_the_run_values(tmp_path):
    run = _run(tmp_path, [{"round": 1, "train_loss": 2.0}, {"round": 2, "train_loss": 1.5, "acc": 0.7},
                          {"round": 3, "train_loss": 1.6}],
               final={"test_accuracy": 0.9}, results={"baseline": 0.4, "diff": 5e-5, "bits": 640})
    checks = [
        {"name": "falls", "claim": "c", "kind": "decreasing", "value": "rows.train_loss"},
        {"name": "high", "claim": "c", "kind": "at_least", "value": "final.test_accuracy", "threshold": 0.8},
        {"name": "small", "claim": "c", "kind": "at_most", "value": "results.diff", "threshold": 1e-4},
        {"name": "beats", "claim": "c", "kind": "greater", "value": "last.acc", "other": "results.baseline"},
        {"name": "near", "claim": "c", "kind": "within", "value": "last.acc", "other": "final.test_accuracy",
         "tolerance": 0.1},
        {"name": "exact", "claim": "c", "kind": "equals", "value": "results.bits", "expected": 640},
        {"name": "absent", "claim": "c", "kind": "at_least", "value": "results.nothing", "threshold": 1},
    ]
    rows = {r["check"]: r for r in reference.evaluate(checks, reference.RunValues(run))}
    assert {name: r["result"] for name, r in rows.items()} == {
        "falls": "fail", "high": "pass", "small": "pass", "beats": "pass", "near": "fail", "exact": "pass",
        "absent": "fail"}
    assert "rose at 1 round(s), first round 3" in rows["falls"]["rule"]
    assert rows["absent"]["measured"] == "missing: results.nothing"
    assert reference.summary(rows.values()) == "fail (3 of 7)"
    written = reference.write(list(rows.values()), tmp_path / "out")
    assert [p.name for p in written] == ["reference_check.csv", "reference_check.md", "reference_check.html"]
    assert 'class="fail"' in written[2].read_text() and "| falls |" in written[1].read_text()


SWEEP = {**MINIMAL, "grid": {"aggregator": ["mean", "compression"]},
         "checks": [{"name": "close", "claim": "c", "kind": "within", "tolerance": 0.02,
                     "value": "point[aggregator=compression].final.test_accuracy",
                     "other": "point[aggregator=mean].final.test_accuracy"}]}


def test_a_sweep_recipe_runs_as_its_own_sweep_dag_and_a_plain_one_in_the_training_dag(recipe_dir):
    from tasks import sweep

    recipe_dir("one", MINIMAL)
    recipe_dir("many", SWEEP)
    assert recipes.trigger("one", "tiny", {"seed": 3}) == (
        "federated_training", {"recipe": "one", "recipe_variant": "tiny", "overrides": {"seed": 3}})
    conf = recipes.trigger("one", "default", {"model": "cnn"})[1]  # make run CONF: exact, even the config's default
    assert ExperimentConfig.from_mapping(recipes.apply(conf)).model == "cnn"  # the recipe's mlp undone
    assert recipes.trigger("many", "tiny", {"seed": 3}) == (
        "sweep_recipe_many", {"recipe_variant": "tiny", "overrides": {"seed": 3}})
    spec = sweep.from_recipe(recipes.load("many"), "tiny")
    assert spec.dag_id == "sweep_recipe_many" and spec.base["rounds"] == 2 and spec.base["recipe"] == "many"
    assert [p["label"] for p in spec.points()] == ["aggregator=mean", "aggregator=compression"]
    assert [p.stem for p in sweep.recipe_sweep_files()] == ["many"]


@pytest.mark.parametrize(("change", "message"), [
    ({"config": {"model": "mlp", "aggregator": "robust"}}, r"\['aggregator'\] are in both the grid and the settings"),
    ({"checks": [{"name": "x", "claim": "c", "kind": "at_least", "threshold": 1, "value": "final.test_accuracy"}]},
     r"must be point\[<label>\]"),
    ({"checks": [{"name": "x", "claim": "c", "kind": "at_least", "threshold": 1,
                  "value": "point[aggregator=dp].final.test_accuracy"}]}, "with a label of"),
    ({"grid": {"seed": [-1, 1]}}, "grid points are invalid"),
])
def test_a_malformed_sweep_recipe_is_refused(recipe_dir, change, message):
    recipe_dir("bad", {**SWEEP, **change})
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.load("bad")


def test_make_run_gets_a_one_line_error_for_an_unknown_recipe_or_bad_json(recipe_dir, capsys):
    recipe_dir("one", MINIMAL)
    assert recipes.main(["trigger", "onne", "default", ""]) == 2
    assert "Did you mean 'one'?" in capsys.readouterr().err
    assert recipes.main(["trigger", "one", "default", "[1]"]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
    assert recipes.main(["trigger", "one", "default", '{"rounds": 3}']) == 0
    assert capsys.readouterr().out.startswith("federated_training\t")


def test_a_sweep_recipe_check_reads_each_grid_point_run(tmp_path):
    values = reference.SweepValues({
        "aggregator=mean": reference.RunValues(_run(tmp_path / "a", [], final={"test_accuracy": 0.90})),
        "aggregator=compression": reference.RunValues(_run(tmp_path / "b", [], final={"test_accuracy": 0.89})),
    })
    [row] = reference.evaluate(SWEEP["checks"], values)
    assert row["result"] == "pass" and "|Δ| = 0.01" in row["measured"]
