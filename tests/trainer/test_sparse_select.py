"""federated_select and sparse federated learning (trainer/sparse_select.py, trainer/sparse_training.py): the
tutorials' own examples with real TFF computations, what federated_select delivers, the byte accounting, and a
tiny run of the sparse_select training path on staged text (chunks, resume, export, the recipe's measurement)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import atomic, metrics_log, shards
from tasks.config import ExperimentConfig
from tasks.paths import RunPaths
from tests.trainer.conftest import checkpoint
from trainer import program, sparse_select, sparse_training, sparse_tutorial

# docs/tutorials/sparse_federated_learning.ipynb, last cell's output ("After training"), as printed (2 decimals):
# Client 1: loss=0.67, precision=0.80, auc=0.91, recall_at_2=0.80
# Client 2: loss=0.68, precision=0.67, auc=0.96, recall_at_2=1.00
# Client 3: loss=0.65, precision=1.00, auc=0.93, recall_at_2=0.80
TUTORIAL_AFTER = [(0.67, 0.80, 0.91, 0.80), (0.68, 0.67, 0.96, 1.00), (0.65, 1.00, 0.93, 0.80)]
TUTORIAL_BEFORE = [(0.69, 0.00, 0.50, 0.60), (0.69, 0.00, 0.50, 0.50), (0.69, 0.00, 0.50, 0.40)]
# ... and its "Training on clients" lines.
TUTORIAL_COHORTS = [[0, 1], [0, 2, 1], [2, 0], [1, 0, 2], [2], [2, 0], [1, 2, 0], [0], [2], [1, 2]]
METRICS = ("loss", "precision", "auc", "recall_at_2")


def test_the_federated_select_example_gives_each_client_the_elements_at_its_keys():
    # docs/tutorials/federated_select.ipynb: broadcast_based_on_client_data(['a', 'b', 'c'], ['0,1', '1,2', '2,0'])
    assert sparse_select.federated_select_example() == ["a,b", "b,c", "c,a"]
    assert sparse_select.federated_select_example(("x", "y"), ("1,1", "0,1")) == ["y,y", "x,y"]


@pytest.fixture(scope="module")
def toy_run():
    assert list(map(list, sparse_tutorial.PRINTED_COHORTS)) == TUTORIAL_COHORTS
    return sparse_tutorial.run(TUTORIAL_COHORTS)


def test_the_toy_run_on_the_printed_cohorts_reproduces_the_tutorials_12_metrics_within_001(toy_run):
    for client, printed in enumerate(TUTORIAL_BEFORE):
        assert [toy_run["before"][client][m] for m in METRICS] == pytest.approx(printed, abs=0.01)
    measured = [[toy_run["after"][client][m] for m in METRICS] for client in range(3)]
    for client, printed in enumerate(TUTORIAL_AFTER):
        assert measured[client] == pytest.approx(printed, abs=0.01), (client, measured[client])


def test_each_client_downloads_max_tokens_rows_and_uploads_its_real_rows_with_their_keys(toy_run):
    # 6 rows of 4 float32 down (the padding included); client 1 has 4 distinct tokens, clients 2 and 3 at least 6.
    expected = {0: (96, 4 * (16 + 4), 4), 1: (96, 6 * 20, 6), 2: (96, 6 * 20, 6)}
    for cohort, stats in zip(TUTORIAL_COHORTS, toy_run["stats"], strict=True):
        for client, s in zip(cohort, stats, strict=True):
            assert (s["downloaded_bytes"], s["uploaded_bytes"], s["selected_rows"]) == expected[client]
        assert sparse_training.bytes_row(sparse_tutorial.problem(), stats)["bytes_mismatch_clients"] == 0
    problem = sparse_tutorial.problem()
    wrong = [{"downloaded_bytes": 96, "uploaded_bytes": 100, "selected_rows": 4, "loss_sum": 0.0, "examples": 1}]
    assert sparse_training.bytes_row(problem, wrong)["bytes_mismatch_clients"] == 1
    assert problem.dense_model_bytes == 13 * 4 * 4


def test_every_client_receives_exactly_the_table_rows_at_its_keys():
    problem = sparse_tutorial.problem()
    table = np.random.default_rng(3).normal(size=(problem.vocab_size, problem.num_tags)).astype(np.float32)
    datasets = [
        sparse_select.batches(ids, tags, problem.vocab_size, size)
        for (ids, tags), size in zip(sparse_tutorial.client_examples(), sparse_tutorial.BATCH_SIZES, strict=True)
    ]
    keys, actual, rows = sparse_select.build_selection(problem)(table, datasets)
    # Most frequent tokens first (by examples containing them), ties to the smaller id, padded with key 0:
    # client 1: orange 3, apple 2, carrot 1, trout 1; client 2: pear 2, OOV 2, then kiwi, arugula, peas, cod;
    # client 3: salmon 2, OOV 2, then the smallest ids of the rest.
    assert [list(np.asarray(k)) for k in keys] == [[1, 0, 4, 8, 0, 0], [2, 12, 3, 6, 7, 10], [11, 12, 0, 1, 2, 3]]
    assert [int(a) for a in actual] == [4, 6, 6]
    for k, r in zip(keys, rows, strict=True):
        np.testing.assert_array_equal(np.asarray(r), table[np.asarray(k)])
    summary = sparse_select.check_selection(table, (keys, actual, rows))
    assert summary["selection_clients_exact"] == summary["selection_clients_bytes_match"] == 3


# -- the training path on staged text ---------------------------------------------------------------------------
PLAY_WORDS = {"hamlet": "denmark ghost elsinore prince", "macbeth": "witch dagger scotland thane"}
COMMON = "the and my lord to of i you"


def role(play: str, name: str, rng: np.random.Generator, n: int) -> shards.Client:
    own, common = PLAY_WORDS[play].split(), COMMON.split()
    lines = [" ".join([*rng.choice(common, 4), *rng.choice(own, 2)]) for _ in range(n)]
    return shards.Client(f"{play.upper()}_{name}", {"snippets": lines})


@pytest.fixture(scope="module")
def plays_staged(tmp_path_factory):
    rng = np.random.default_rng(5)
    out = tmp_path_factory.mktemp("plays")
    train = [role(play, f"R{i}", rng, 30) for play in PLAY_WORDS for i in range(4)]
    shards.write_dataset(
        out,
        {"train": train, "test": [role("hamlet", "T", rng, 20), role("macbeth", "T", rng, 20)]},
        shards.Schema("text", (shards.Column("snippets", "string"),), x="snippets"),
        metadata={"dataset": "shakespeare", "fingerprint": "plays", "settings": {}, "source": {}},
    )
    return out


def sparse_run(tmp_path, staged, name: str, **overrides) -> RunPaths:
    cfg = ExperimentConfig(
        **{
            "dataset": "shakespeare",
            "plays": "hamlet,macbeth",
            "algorithm": "sparse_select",
            "model": "bag_of_words_logistic",
            "split": "by_client",
            "num_clients": 8,
            "clients_per_round": 3,
            "vocab_size": 20,
            "max_tokens_per_client": 13,
            "batch_size": 2,
            "local_epochs": 1,
            "client_learning_rate": 2.0,
            "rounds": 3,
            "rounds_per_chunk": 3,
            "eval_every": 3,
            "keep_checkpoints": 100,
            **overrides,
        }
    )
    run = RunPaths(tmp_path / name)
    run.root.mkdir()
    atomic.write_json(run.config, cfg.to_dict())
    atomic.write_json(run.staged, {"path": str(staged), "fingerprint": "plays"})
    return run


def test_a_sparse_run_logs_bytes_and_quality_resumes_exactly_and_exports(tmp_path, plays_staged):
    one_go = sparse_run(tmp_path, plays_staged, "one_go", recipe="sparse_federated_learning")
    chunked = sparse_run(tmp_path, plays_staged, "chunked")
    assert program.train_until_round(one_go.root, 3) == 3
    program.train_until_round(chunked.root, 1)
    program.train_until_round(chunked.root, 3)  # a new experiment, restored from round 1's checkpoint
    np.testing.assert_array_equal(checkpoint(one_go).leaves[0], checkpoint(chunked).leaves[0])

    rows = metrics_log.read_rows(one_go.metrics)
    assert [r["round"] for r in rows] == [1, 2, 3]
    for r in rows:  # 16 words + OOV = 17 rows of 2 plays; 13 rows down; a role's 12 words + keys up
        assert (r["dense_model_bytes"], r["bytes_downloaded_per_client"]) == (17 * 2 * 4, 13 * 2 * 4)
        assert r["bytes_uploaded_per_client"] == 12 * (2 * 4 + 4) and r["bytes_mismatch_clients"] == 0
    final, results = atomic.read_json(one_go.final), atomic.read_json(one_go.root / "recipe_results.json")
    assert final["test_accuracy"] > results["prior_test_recall_at_1"]  # the plays' own words tell them apart
    assert final["test_auc"] > 0.9 and (one_go.model / "MLmodel").exists()
    assert results["federated_select_example"] == "a,b;b,c;c,a"
    assert results["tutorial_max_metric_difference"] <= 0.01
    assert results["selection_clients_not_exact"] == results["bytes_mismatch_client_rounds"] == 0
    assert (one_go.root / "artifacts" / "plays.txt").read_text().split() == ["hamlet", "macbeth"]


def test_a_role_of_no_listed_play_is_refused_naming_the_fix(tmp_path, plays_staged):
    run = sparse_run(tmp_path, plays_staged, "wrong_plays", plays="hamlet,lear")
    with pytest.raises(Exception, match=r"MACBETH_R0.*none of the plays.*Fix: stage"):
        program.train_until_round(run.root, 1)
