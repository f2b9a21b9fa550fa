"""The text-generation recipe in the trainer: the tutorial's pipeline and character GRU, central pretraining,
the warm start from a registered model's files, FedAvg fine-tuning and the recipe's measurement (real TFF,
a GRU of 16 units, a few lines)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks import atomic, shards
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from trainer import pretrain, program, recipe_results, text, warm_start

SPEECH = (
    "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
    "that lour'd upon our house in the deep bosom of the ocean buried."
)


def text_client(client_id: str, rng: np.random.Generator, n: int) -> shards.Client:
    words = SPEECH.split()
    lines = [" ".join(words[(start := int(rng.integers(0, len(words) - 8))) : start + 8]) for _ in range(n)]
    return shards.Client(client_id, {"snippets": lines})


def write_text_dataset(out: Path, prefix: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    ids = [f"{prefix}_ROLE{i}" for i in range(4)]
    shards.write_dataset(
        out,
        {"train": [text_client(cid, rng, 30) for cid in ids], "test": [text_client(cid, rng, 8) for cid in ids]},
        shards.Schema("text", (shards.Column("snippets", "string"),), x="snippets"),
        metadata={"dataset": "shakespeare", "fingerprint": prefix, "settings": {}, "source": {}},
    )
    return out


@pytest.fixture(scope="module")
def text_sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("text")
    return {
        "fine_tune": write_text_dataset(root / "fine", "HAMLET", 1),
        "pretrain": write_text_dataset(root / "pre", "LEAR", 2),
    }


def text_run(root: Path, staged: Path, name: str, **overrides) -> RunPaths:
    cfg = ExperimentConfig(
        **{
            "dataset": "shakespeare",
            "plays": "hamlet",
            "model": "char_gru",
            "rnn_units": 16,
            "num_clients": 4,
            "clients_per_round": 2,
            "min_examples_per_client": 1,
            "local_epochs": 1,
            "batch_size": 8,
            "rounds": 2,
            "rounds_per_chunk": 2,
            "eval_every": 2,
            "client_learning_rate": 0.05,
            "pretrain_epochs": 3,
            "pretrain_batch_size": 8,
            "pretrain_learning_rate": 0.01,
            **overrides,
        }
    )
    run = RunPaths(root / name)
    run.root.mkdir()
    atomic.write_json(run.config, cfg.to_dict())
    atomic.write_json(run.staged, {"path": str(staged), "fingerprint": "text"})
    return run


def test_the_tutorials_pipeline_cuts_lines_into_sequences_of_100_plus_1_characters():
    assert text.VOCAB_SIZE == 86 and text.to_ids("dh\n").tolist() == [0, 1, text.CHAR_IDS["\n"]]
    assert text.to_ids("é").tolist() == [text.OOV_ID]  # the tutorial's lookup default
    x, y = text.sequences(text.client_text(["a" * 150, "b" * 150]))  # 302 characters: two windows of 101
    assert x.shape == y.shape == (2, 100) and x.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # the target is the input shifted by one character
    assert text.sequences("short")[0].shape == (0, 100)


def test_the_tutorials_char_gru_has_its_layers_and_parameter_count():
    model = text.build_char_gru(1024)
    assert [w.shape.as_list() for w in model.trainable_weights] == [
        [86, 256],
        [256, 3072],
        [1024, 3072],
        [2, 3072],
        [1024, 86],
        [86],
    ]
    assert model.count_params() == 4_048_470  # the tutorial's Embedding 86x256, GRU 1024, Dense 86


def test_pretraining_then_warm_start_fine_tunes_from_the_pretrained_weights(tmp_path, text_sets):
    run = text_run(
        tmp_path,
        text_sets["fine_tune"],
        "run",
        recipe="text_generation",
        pretrain_plays="lear",
        warm_start="models:/char-gru@pretrained",
    )
    (run.root / pretrain.DIRECTORY).mkdir()
    atomic.write_json(run.root / pretrain.DIRECTORY / pretrain.STAGED, {"path": str(text_sets["pretrain"])})
    result = pretrain.pretrain(run.root)
    assert result["test_accuracy"] > 5 * result["random_guess_accuracy"]  # learnt the text, far above 1/86
    assert result["epoch_loss"][-1] < result["epoch_loss"][0]
    assert (run.root / pretrain.DIRECTORY / "model" / "MLmodel").is_file()
    # What the Airflow side does after registering it: download the registered version into the run.
    shutil.copytree(run.root / pretrain.DIRECTORY / "model", warm_start.model_dir(run.root))

    program.train_until_round(run.root, 2)  # the last chunk exports and measures the recipe

    exp = program.load_experiment(run.root)
    pretrained = warm_start.load_weights(run.root, exp.eval_model)
    round0 = exp.checkpoints.load(0).leaves
    for expected, got in zip(pretrained.trainable, round0, strict=False):
        np.testing.assert_array_equal(expected, got)
    results = atomic.read_json(run.root / recipe_results.RESULTS_FILE)
    assert results["warm_start_test_accuracy"] == pytest.approx(result["test_accuracy"], abs=0.15)
    assert results["final_test_loss"] == pytest.approx(atomic.read_json(run.final)["test_loss"])
    assert np.isfinite(results["lr05_test_loss"]) and 0 <= results["lr05_test_accuracy"] <= 1
    sample = (run.root / "artifacts" / "generated_text.txt").read_text()
    assert "=== warm start" in sample and "=== after 2 rounds" in sample
    rows = [r for r in atomic.read_json(run.root / "artifacts" / "text_generation.json").items()]
    assert rows


def test_a_warm_start_of_another_width_is_refused_naming_the_shapes(tmp_path, text_sets):
    source = text_run(tmp_path, text_sets["fine_tune"], "source", rnn_units=8)
    (source.root / pretrain.DIRECTORY).mkdir()
    atomic.write_json(source.root / pretrain.DIRECTORY / pretrain.STAGED, {"path": str(text_sets["pretrain"])})
    pretrain.pretrain(source.root)
    run = text_run(tmp_path, text_sets["fine_tune"], "run", warm_start="models:/char-gru@pretrained")
    shutil.copytree(source.root / pretrain.DIRECTORY / "model", warm_start.model_dir(run.root))
    with pytest.raises(warm_start.WarmStartMismatchError, match=r"rnn_units"):
        program.train_until_round(run.root, 1)


def test_a_warm_start_that_was_never_downloaded_says_which_task_fetches_it(tmp_path, text_sets):
    run = text_run(tmp_path, text_sets["fine_tune"], "run", warm_start="models:/char-gru@pretrained")
    with pytest.raises(warm_start.Error, match="warm_start task"):
        program.train_until_round(run.root, 1)
