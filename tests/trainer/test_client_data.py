"""The staged shards as TFF's ClientData (trainer/client_data.py) and the client_data recipe's measurement:
the working_with_client_data tutorial's three ways of feeding a process give the same state."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tasks import atomic, shards, stage
from tasks.config import ExperimentConfig
from trainer import client_data, program, recipe_results


def test_the_staged_split_is_a_tff_client_data_serving_each_clients_own_examples(staged):
    manifest = shards.Manifest.read(staged)
    data = client_data.StagedClientData(manifest, "train")
    assert isinstance(data, tff.simulation.datasets.ClientData)
    assert data.client_ids == manifest.client_ids("train") == [f"c{i}" for i in range(6)]
    expected = manifest.read_client("train", "c3")
    from_python = list(data.create_tf_dataset_for_client("c3").as_numpy_iterator())
    assert data.create_tf_dataset_for_client("c3").element_spec == data.element_type_structure
    # The dataset computation runs in TFF's runtime and slices the same client out of its graph.
    assert str(data.dataset_computation.type_signature) == "(str -> <pixels=float32[8,8,1],label=int64>*)"
    from_tff = list(data.dataset_computation("c3"))
    for examples in (from_python, from_tff):
        assert len(examples) == len(expected.y) == 24
        np.testing.assert_array_equal(np.stack([e["pixels"] for e in examples]), expected.x)
        np.testing.assert_array_equal([e["label"] for e in examples], expected.y)
    preprocessed = data.preprocess(
        client_data.model_input_preprocess((8, 8, 1), "pixels", "label", batch_size=10, local_epochs=2)
    )
    assert str(preprocessed.dataset_computation.type_signature) == "(str -> <x=float32[?,8,8,1],y=int64[?]>*)"
    assert [len(b["y"]) for b in preprocessed.create_tf_dataset_for_client("c3")] == [10, 10, 10, 10, 8]


def test_an_unknown_client_text_data_or_a_split_too_large_for_a_graph_is_refused_with_the_fix(
    staged, tmp_path, monkeypatch
):
    data = client_data.StagedClientData(shards.Manifest.read(staged), "train")
    text = tmp_path / "text"
    text.mkdir()
    shards.write_dataset(
        text,
        {"train": [shards.Client("role", {"snippets": np.array(["To be", "or not"], dtype=object)})]},
        shards.Schema("text", (shards.Column("snippets", "string"),), x="snippets"),
        metadata={"dataset": "plays", "fingerprint": "plays", "settings": {}, "source": {}},
    )
    with pytest.raises(client_data.ClientDataError, match=r"labelled images or vectors; .* holds text data.*Fix"):
        client_data.StagedClientData(shards.Manifest.read(text), "train")
    with pytest.raises(client_data.ClientDataError, match=r"No client 'c99' in split 'train'.*Fix: pick one"):
        data.create_tf_dataset_for_client("c99")
    with pytest.raises(client_data.ClientDataError, match=r"split 'validation' .* has no clients.*Fix"):
        client_data.StagedClientData(shards.Manifest.read(staged), "validation")
    monkeypatch.setattr(client_data, "MAX_EMBEDDED_BYTES", 1000)
    with pytest.raises(client_data.ClientDataError, match=r"carries at most .*Fix: stage fewer clients"):
        _ = data.serializable_dataset_fn


def test_client_data_recipe_the_three_ways_of_feeding_data_give_the_same_state(make_run):
    run = make_run(
        "client_data",
        recipe="client_data",
        model="softmax",
        clients_per_round=3,
        local_epochs=1,
        batch_size=10,
        rounds=2,
        rounds_per_chunk=2,
    )
    program.train_until_round(run.root, 2)  # the last chunk exports, which measures the recipe
    results = atomic.read_json(run.root / recipe_results.RESULTS_FILE)
    assert results["rounds_compared"] == 2 and results["client_data_clients"] == 6
    assert results["max_state_difference_composed"] <= 1e-6
    assert results["max_state_difference_manual"] <= 1e-6
    assert (
        results["examples_python_datasets"] == results["examples_composed"] == results["examples_manual"] == 2 * 3 * 24
    )
    assert results["element_spec_matches"] == 1.0 and results["composed_and_manual_same_result_type"] == 1.0


def test_tffs_own_sqlite_file_staged_gives_its_writers_as_clients_with_tffs_examples(tmp_path, monkeypatch):
    """A user with emnist_all.sqlite: the staged ClientData has the file's writers, each with the examples
    TFF's own SqlClientData gives that writer (a small file written by TFF in the same format)."""
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path))
    rng = np.random.default_rng(0)
    writers = {
        f"f{i:04d}_{i}": (rng.random((6 + i, 28, 28), dtype=np.float32), rng.integers(0, 10, 6 + i)) for i in range(5)
    }
    path = tmp_path / "emnist_like.sqlite"

    def dataset_fn(cid):
        pixels, labels = writers[cid]
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(pixels=pixels, label=labels))

    splits = {cid: "digits_only_train" if i < 3 else "digits_only_test" for i, cid in enumerate(writers)}
    tff.simulation.datasets.save_to_sql_client_data(
        list(writers), dataset_fn, str(path), split_names_by_client_id=splits
    )
    manifest = stage.stage_dataset(
        ExperimentConfig(
            dataset="tff_sqlite", source_path=str(path), num_clients=3, clients_per_round=2, min_examples_per_client=5
        )
    ).manifest
    ours = client_data.StagedClientData(manifest, "train")
    theirs = tff.simulation.datasets.load_and_parse_sql_client_data(
        str(path),
        element_spec=collections.OrderedDict(
            pixels=tf.TensorSpec((28, 28), tf.float32), label=tf.TensorSpec((), tf.int64)
        ),
    )

    assert sorted(ours.client_ids) == ["f0000_0", "f0001_1", "f0002_2"]  # the file's writers, not a partition
    for cid in ours.client_ids:
        mine = list(ours.dataset_computation(cid))  # the computation, run by TFF's runtime
        tffs = next(iter(theirs.create_tf_dataset_for_client(cid).batch(100)))
        np.testing.assert_array_equal(np.stack([e["pixels"] for e in mine]), tffs["pixels"])
        np.testing.assert_array_equal([e["label"] for e in mine], tffs["label"])
