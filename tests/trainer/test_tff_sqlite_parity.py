"""TFF 0.87's SqlClientData, written by TFF itself, read back without TensorFlow (tasks/sources/tff_sqlite.py)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tasks import stage
from tasks.config import ExperimentConfig
from tasks.sources.tff_sqlite import TffSqliteSource, parse_example


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = {f"f{i:04d}_{i}": (rng.random((5 + i, 28, 28), dtype=np.float32), rng.integers(0, 10, 5 + i))
            for i in range(6)}
    path = tmp_path_factory.mktemp("sql") / "emnist_like.sqlite"

    def dataset_fn(cid):
        pixels, labels = data[cid]
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(pixels=pixels, label=labels))

    splits = {cid: ("digits_only_train" if i < 4 else "digits_only_test") for i, cid in enumerate(data)}
    tff.simulation.datasets.save_to_sql_client_data(list(data), dataset_fn, str(path), split_names_by_client_id=splits)
    return path, data


def test_our_decoder_reads_what_tf_serialises():
    example = tf.train.Example(features=tf.train.Features(feature={
        "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=[0.0, 0.5, -1.25, 3e-8])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[7, -3, 2**40])),
        "snippets": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"To be", "ö".encode()])),
    }))

    parsed = parse_example(example.SerializeToString())

    assert parsed["pixels"].tolist() == pytest.approx([0.0, 0.5, -1.25, 3e-8])
    assert parsed["label"].tolist() == [7, -3, 2**40]
    assert parsed["snippets"] == [b"To be", "ö".encode()]


def test_a_file_written_by_tff_reads_back_identically_to_tffs_own_loader(written):
    path, data = written
    source = TffSqliteSource(path, test_split="")

    ours = {c.client_id: c for c in source.clients("train")} | {c.client_id: c for c in source.clients("test")}
    theirs = tff.simulation.datasets.load_and_parse_sql_client_data(
        str(path), element_spec=collections.OrderedDict(
            pixels=tf.TensorSpec((28, 28), tf.float32), label=tf.TensorSpec((), tf.int64)))

    assert source.split_names == {"train": "digits_only_train", "test": "digits_only_test"}
    assert source.schema().column("pixels").shape == (28, 28)
    assert set(ours) == set(data)
    for cid in theirs.client_ids:
        batch = next(iter(theirs.create_tf_dataset_for_client(cid).batch(1000)))
        assert np.array_equal(ours[cid].columns["pixels"], batch["pixels"].numpy())
        assert np.array_equal(ours[cid].columns["label"], batch["label"].numpy())
        assert np.array_equal(ours[cid].columns["label"], data[cid][1])


def test_the_stage_step_stages_tffs_file_with_its_own_test_split(written, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path))
    path, data = written

    m = stage.stage_dataset(ExperimentConfig(dataset="tff_sqlite", source_path=str(path), num_clients=3,
                                             clients_per_round=2, min_examples_per_client=5)).manifest

    assert m.data["settings"]["split"] == "source" and m.kind == "image"
    assert len(m.client_ids("train")) == 3 and set(m.client_ids("test")) == {"f0004_4", "f0005_5"}
