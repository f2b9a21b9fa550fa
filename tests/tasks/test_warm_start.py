"""The text-generation recipe's settings and the Airflow-side warm_start step (tasks/warm_start.py):
config errors, the registry lookup and download, and the disjoint-plays check."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks import atomic, shards, tracking
from tasks import warm_start as warm
from tasks.config import ConfigError, ExperimentConfig
from tasks.paths import RunPaths

TEXT = {
    "dataset": "shakespeare",
    "model": "char_gru",
    "plays": "hamlet,lear",
    "num_clients": 4,
    "clients_per_round": 2,
    "rnn_units": 16,
    "experiment_name": "fedflow-warm-start-test",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pretrain_plays": "lear,tempest", "warm_start": "models:/m@pretrained"}, r"disjoint.*\['lear'\] in both"),
        (
            {"plays": "", "pretrain_plays": "tempest", "warm_start": "models:/m@pretrained"},
            "plays='' stages every play",
        ),
        ({"pretrain_plays": "tempest"}, "pretrain_plays needs warm_start"),
        ({"warm_start": "runs:/abc/model"}, "warm_start must match"),
        ({"dataset": "digits", "plays": ""}, None),
        ({"plays": "hamlet", "dataset": "digits"}, "plays selects Shakespeare plays"),
        ({"engine": "hybrid"}, "'tff' engine only"),
        ({"model": "mlp", "pretrain_plays": "tempest", "warm_start": "models:/m@p"}, "model='char_gru'"),
    ],
)
def test_text_settings_are_checked_with_the_problem_and_the_fix(change, message):
    settings = {**TEXT, **change}
    if message is None:  # char_gru on digits: a valid config, but not trainable
        with pytest.raises(ConfigError, match="does not fit dataset 'digits'.*Fix"):
            ExperimentConfig(**settings).check_trainable()
        return
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig(**settings)


def test_the_text_model_trains_text_only_and_text_trains_the_text_model_only():
    ExperimentConfig(**TEXT).check_trainable()
    with pytest.raises(ConfigError, match="federated_data DAG"):
        ExperimentConfig(**{**TEXT, "model": "cnn"}).check_trainable()
    assert ExperimentConfig(**TEXT).parsed_plays == ["hamlet", "lear"]


@pytest.fixture(scope="module")
def mlruns(tmp_path_factory) -> Path:
    """One sqlite store for the module (creating its schema is the slow part)."""
    return tmp_path_factory.mktemp("mlruns")


@pytest.fixture
def run(monkeypatch, mlruns, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FEDFLOW_MLRUNS_DIR", str(mlruns))
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))

    def create(**overrides) -> RunPaths:
        cfg = ExperimentConfig(**{**TEXT, **overrides})
        run = RunPaths(tmp_path / "run")
        run.root.mkdir()
        atomic.write_json(run.config, cfg.to_dict())
        tracking.start_run(cfg, run, tags={})
        return run

    return create


def test_a_run_without_warm_start_has_nothing_to_prepare(run):
    assert warm.prepare({"run_dir": str(run().root)}) == {"status": "no-warm-start"}


def test_a_missing_alias_without_pretraining_fails_naming_the_alias_and_the_fix(run):
    handle = {"run_dir": str(run(warm_start="models:/no-such-model@pretrained").root)}
    with pytest.raises(warm.WarmStartError, match=r"no alias 'pretrained' of model 'no-such-model'.*Fix: set pretrain"):
        warm.prepare(handle)


def test_a_registered_alias_is_downloaded_into_the_run_and_tagged_on_its_mlflow_run(run, tmp_path):
    import mlflow

    c = tracking.client()
    model_dir = tmp_path / "registered"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "weights.txt").write_text("pretrained\n")
    source = c.create_run(tracking.experiment_id(c, "fedflow-warm-start-test")).info.run_id
    logged = c.create_logged_model(
        experiment_id=c.get_run(source).info.experiment_id, name="model", source_run_id=source
    )
    c.log_model_artifacts(logged.model_id, str(model_dir))
    version = mlflow.register_model(f"models:/{logged.model_id}", "char-gru-test")
    c.set_registered_model_alias("char-gru-test", "pretrained", version.version)

    target = run(warm_start="models:/char-gru-test@pretrained")
    outcome = warm.prepare({"run_dir": str(target.root)})

    assert outcome["status"] == "registered" and outcome["version"] == str(version.version)
    assert (target.root / "warm_start" / "model" / "weights.txt").read_text() == "pretrained\n"
    tags = c.get_run(tracking.run_id(target)).data.tags
    assert tags["fedflow.warm_start"] == "models:/char-gru-test@pretrained"
    assert tags["fedflow.warm_start_version"] == str(version.version)
    assert warm.prepare({"run_dir": str(target.root)})["status"] == "reused"  # a retry downloads nothing again


def _register_pretrained(tmp_path, name: str, **params) -> None:
    """A version registered the way warm_start's pretraining registers one: from a ``pretrain`` run."""
    import mlflow

    c = tracking.client()
    model_dir = tmp_path / f"registered-{name}"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    experiment = tracking.experiment_id(c, "fedflow-warm-start-test")
    source = c.create_run(experiment, tags={"fedflow.role": "pretrain"}).info.run_id
    for key, value in params.items():
        c.log_param(source, key, value)
    logged = c.create_logged_model(experiment_id=experiment, name="model", source_run_id=source)
    c.log_model_artifacts(logged.model_id, str(model_dir))
    version = mlflow.register_model(f"models:/{logged.model_id}", name)
    c.set_registered_model_alias(name, "pretrained", version.version)


def test_an_alias_pretrained_with_other_settings_is_refused_naming_each_difference(run, tmp_path):
    settings = {
        "model": "char_gru",
        "rnn_units": "16",
        "pretrain_epochs": "2",
        "pretrain_batch_size": "64",
        "pretrain_learning_rate": "0.003",
        "pretrain_plays": "tempest",
    }
    _register_pretrained(tmp_path, "char-gru-other", **settings)
    same = {
        "warm_start": "models:/char-gru-other@pretrained",
        "pretrain_plays": "tempest",
        "pretrain_epochs": 2,
        "pretrain_batch_size": 64,
        "pretrain_learning_rate": 0.003,
    }
    target = run(**{**same, "pretrain_plays": "tempest,twelfth_night", "pretrain_epochs": 3})
    with pytest.raises(
        warm.WarmStartError,
        match=r"pretrain_epochs: registered '2', this run '3'; pretrain_plays: "
        r"registered 'tempest', this run 'tempest,twelfth_night'.*Fix: name another alias",
    ):
        warm.prepare({"run_dir": str(target.root)})
    shutil.rmtree(target.root)
    assert run(**same) and warm.prepare({"run_dir": str(target.root)})["status"] == "registered"


def test_pretraining_and_fine_tuning_data_sharing_a_role_is_refused(tmp_path):
    def staged(name: str, ids: list[str]) -> shards.Manifest:
        out = tmp_path / name
        out.mkdir()
        shards.write_dataset(
            out,
            {"train": [shards.Client(cid, {"snippets": ["To be."]}) for cid in ids]},
            shards.Schema("text", (shards.Column("snippets", "string"),), x="snippets"),
            metadata={"dataset": "shakespeare", "fingerprint": name, "settings": {}, "source": {}},
        )
        return shards.Manifest.read(Path(out))

    fine = staged("fine", ["HAMLET_HAM", "LEAR_LEAR"])
    warm.check_disjoint(staged("other", ["TEMPEST_PRO"]), fine)
    with pytest.raises(warm.WarmStartError, match=r"share 1 client\(s\), e.g. \['LEAR_LEAR'\]"):
        warm.check_disjoint(staged("pre", ["LEAR_LEAR", "TEMPEST_PRO"]), fine)


def test_the_pretraining_data_are_the_pretrain_plays_split_like_the_fine_tuning_clients():
    cfg = ExperimentConfig(
        **{
            **TEXT,
            "pretrain_plays": "tempest, comedy_of_errors",
            "warm_start": "models:/m@p",
            "recipe": "text_generation",
        }
    )
    pre = warm.pretraining_config(cfg, eligible_clients=12)
    assert pre.plays == "comedy_of_errors,tempest" and pre.num_clients == 12 and pre.split == "within_client"
    assert pre.warm_start == "" and pre.pretrain_plays == "" and pre.recipe == "none"
    assert pre.min_examples_per_client == cfg.min_examples_per_client and pre.seed == cfg.seed


def test_validation_passes_the_text_model_on_text_and_fails_it_on_other_data(tmp_path):
    import numpy as np

    from tasks import validate

    (tmp_path / "text").mkdir()
    (tmp_path / "vector").mkdir()
    schema = shards.Schema("text", (shards.Column("snippets", "string"),), x="snippets")
    clients = [shards.Client(cid, {"snippets": ["To be, or not to be."] * 3}) for cid in ("HAMLET_HAM", "LEAR_LEAR")]
    shards.write_dataset(
        tmp_path / "text",
        {"train": clients, "test": [shards.Client("T", {"snippets": ["x"]})]},
        schema,
        metadata={"dataset": "shakespeare", "fingerprint": "t", "settings": {}, "source": {}},
    )
    cfg = ExperimentConfig(**{**TEXT, "num_clients": 2, "clients_per_round": 1, "min_examples_per_client": 1})
    report = validate.validate_staged(shards.Manifest.read(tmp_path / "text"), cfg)
    assert report.success, report.problems()

    vector = shards.Schema(
        "vector",
        (shards.Column("x", "float32", (4,)), shards.Column("label", "int64")),
        x="x",
        label="label",
        num_classes=2,
    )
    rows = [shards.Client(c, {"x": np.zeros((3, 4), np.float32), "label": np.array([0, 1, 0])}) for c in "ab"]
    shards.write_dataset(
        tmp_path / "vector",
        {"train": rows, "test": rows[:1]},
        vector,
        metadata={"dataset": "table", "fingerprint": "v", "settings": {}, "source": {}},
    )
    report = validate.validate_staged(shards.Manifest.read(tmp_path / "vector"), cfg)
    assert "model 'char_gru' trains on text only; this is vector data. Fix: another model (cnn, mlp, softmax)." in (
        report.problems()
    )
