import numpy as np
import pytest

from tasks import paths, shards, stage
from tasks.config import ExperimentConfig

SMALL = ExperimentConfig(num_clients=5, clients_per_round=3, min_examples_per_client=10)
SCHEMA = shards.Schema("image", (shards.Column("pixels", "float32", (2, 2, 1)), shards.Column("label", "int64")),
                       x="pixels", label="label", num_classes=10)

# 10 classes x 60 examples, in class order.
LABELS = np.repeat(np.arange(10), 60)


def rng(seed=0):
    return np.random.default_rng(seed)


def mean_label_entropy(labels, parts):
    entropies = []
    for part in parts:
        p = np.bincount(labels[part], minlength=10) / len(part)
        p = p[p > 0]
        entropies.append(-(p * np.log(p)).sum())
    return float(np.mean(entropies))


def files_with_mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in sorted(root.iterdir())}


# -- partitions ---------------------------------------------------------------------------------


def test_dirichlet_partition_is_the_same_for_the_same_seed_and_differs_for_another():
    first = stage.dirichlet_partition(LABELS, 10, 0.5, 5, rng(1))
    again = stage.dirichlet_partition(LABELS, 10, 0.5, 5, rng(1))
    other = stage.dirichlet_partition(LABELS, 10, 0.5, 5, rng(2))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_partition_gives_every_example_to_exactly_one_client():
    parts = stage.dirichlet_partition(LABELS, 10, 0.3, 5, rng())

    assert len(parts) == 10
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


def test_dirichlet_partition_redraws_until_every_client_has_min_size_examples():
    # With these settings about four in five single draws leave some client with fewer than 25.
    for seed in range(5):
        parts = stage.dirichlet_partition(LABELS, 10, 0.3, 25, rng(seed))

        assert min(len(p) for p in parts) >= 25


def test_a_small_dirichlet_alpha_skews_the_clients_labels_more_than_iid():
    skewed = stage.dirichlet_partition(LABELS, 10, 0.1, 5, rng())
    uniform = stage.iid_partition(len(LABELS), 10, 5, rng())

    assert mean_label_entropy(LABELS, skewed) < 0.6 * mean_label_entropy(LABELS, uniform)


def test_iid_partition_splits_into_near_equal_disjoint_parts():
    parts = stage.iid_partition(103, 10, 10, rng())

    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(103))


@pytest.mark.parametrize("partition", ["dirichlet", "iid"])
def test_more_clients_than_the_examples_allow_is_rejected_with_the_fix(partition):
    with pytest.raises(stage.PartitionError) as e:
        if partition == "dirichlet":
            stage.dirichlet_partition(LABELS, 61, 0.5, 10, rng())
        else:
            stage.iid_partition(len(LABELS), 61, 10, rng())

    message = str(e.value)
    assert "61 x 10 = 610 exceeds the 600 training examples" in message
    assert "num_clients=61" in message
    assert "Fix: lower num_clients or min_examples_per_client" in message


def test_a_dirichlet_split_that_never_meets_min_size_is_rejected_with_the_fix():
    with pytest.raises(stage.PartitionError) as e:
        stage.dirichlet_partition(LABELS, 20, 0.01, 30, rng(), attempts=5)

    message = str(e.value)
    assert "Could not give each of 20 clients >= 30 examples with dirichlet_alpha=0.01 in 5" in message
    assert "Fix: raise dirichlet_alpha" in message


def test_stratified_split_keeps_each_class_share_in_the_test_split():
    labels = np.array([0] * 100 + [1] * 40 + [2] * 60)

    train, test = stage.stratified_split(labels, 0.25, rng())

    assert np.bincount(labels[test]).tolist() == [25, 10, 15]
    assert np.bincount(labels[train]).tolist() == [75, 30, 45]
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))


# -- staging the real digits --------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def staged(data_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDFLOW_DATA_DIR", str(data_dir))
        return stage.stage_dataset(SMALL)


@pytest.fixture
def same_data_dir(monkeypatch, data_dir):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(data_dir))
    return data_dir


def test_staging_writes_a_manifest_and_parquet_shards_under_the_fingerprint(staged, data_dir):
    assert not staged.reused
    assert staged.path == data_dir / "staged" / "digits" / staged.fingerprint
    assert sorted(p.name for p in staged.path.iterdir()) == [
        "manifest.json", "test-00000.parquet", "train-00000.parquet"
    ]
    data = staged.manifest.data
    assert data["settings"] == stage.staging_settings(SMALL, None)
    assert staged.manifest.client_ids("train") == [f"client_{i}" for i in range(5)]
    assert data["splits"]["train"]["num_examples"] + data["splits"]["test"]["num_examples"] == 1797
    assert set(data["files"]) == {"train-00000.parquet", "test-00000.parquet"}


def test_staged_clients_hold_their_manifest_counts_of_float32_pixels_in_0_1_and_int64_labels(staged):
    for entry in staged.manifest.data["splits"]["train"]["clients"]:
        client = staged.manifest.read_client("train", entry["id"])

        assert client.x.dtype == np.float32 and client.x.shape == (entry["num_examples"], 8, 8, 1)
        assert client.y.dtype == np.int64
        assert 0.0 <= client.x.min() and client.x.max() <= 1.0
        assert {str(k): int(v) for k, v in zip(*np.unique(client.y, return_counts=True), strict=True)} == (
            entry["label_counts"]
        )
        assert entry["num_examples"] >= SMALL.min_examples_per_client


@pytest.mark.usefixtures("same_data_dir")
def test_staging_again_reuses_the_stage_without_rewriting_it(staged):
    before = files_with_mtimes(staged.path)

    again = stage.stage_dataset(SMALL)

    assert again.reused
    assert again.path == staged.path
    assert files_with_mtimes(staged.path) == before


@pytest.mark.usefixtures("same_data_dir")
def test_another_seed_is_staged_into_another_fingerprint_directory(staged):
    other = stage.stage_dataset(ExperimentConfig(num_clients=5, clients_per_round=3, seed=1))

    assert not other.reused
    assert other.fingerprint != staged.fingerprint
    assert other.path.parent == staged.path.parent
    first = staged.manifest.read_client("train", "client_0")
    assert not np.array_equal(first.y, other.manifest.read_client("train", "client_0").y)


def test_a_crash_mid_stage_leaves_neither_a_stage_nor_a_temp_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    real_add = shards.DatasetWriter.add
    calls = []

    def write_then_crash(self, split, client):
        calls.append(split)
        if split == "test":
            raise OSError("disk full")
        return real_add(self, split, client)

    monkeypatch.setattr(shards.DatasetWriter, "add", write_then_crash)

    with pytest.raises(OSError, match="disk full"):
        stage.stage_dataset(SMALL)

    assert calls == ["train"] * 5 + ["test"]
    assert list((paths.staged_root() / "digits").iterdir()) == []


def test_a_stager_that_loses_the_race_uses_the_winners_copy(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    real_finish = shards.DatasetWriter.finish
    winner = {}

    def finish_a_concurrent_stage_first(self, metadata):
        monkeypatch.setattr(shards.DatasetWriter, "finish", real_finish)
        winner["stage"] = stage.stage_dataset(SMALL)
        winner["files"] = files_with_mtimes(winner["stage"].path)
        return real_finish(self, metadata)

    monkeypatch.setattr(shards.DatasetWriter, "finish", finish_a_concurrent_stage_first)

    loser = stage.stage_dataset(SMALL)

    assert loser.path == winner["stage"].path
    assert files_with_mtimes(loser.path) == winner["files"]
    assert [p.name for p in loser.path.parent.iterdir()] == [loser.fingerprint]


# -- reading clients back -----------------------------------------------------------------------


@pytest.fixture
def known_split(tmp_path):
    """Three clients with known examples, two per shard: shard 0 holds a and b, shard 1 holds c."""
    gen = rng(7)
    clients = [
        shards.Client(cid, {"pixels": gen.random((n, 2, 2, 1), dtype=np.float32), "label": gen.integers(0, 10, n)})
        for cid, n in (("a", 3), ("b", 5), ("c", 2))
    ]
    shards.write_dataset(tmp_path, {"train": clients}, SCHEMA, metadata={"fingerprint": "test"}, clients_per_shard=2)
    return [shards.ClientExamples(c.client_id, c.columns["pixels"], c.columns["label"]) for c in clients], (
        shards.Manifest.read(tmp_path))


def test_read_client_returns_exactly_that_clients_examples(known_split):
    clients, manifest = known_split

    for expected in clients:
        got = manifest.read_client("train", expected.client_id)

        assert got.client_id == expected.client_id
        assert np.array_equal(got.x, expected.x) and got.x.dtype == np.float32
        assert np.array_equal(got.y, expected.y) and got.y.dtype == np.int64


def test_each_client_is_one_row_group_of_its_shard_at_the_recorded_byte_range(known_split):
    clients, manifest = known_split

    entries = {c: manifest.client_entry("train", c) for c in "abc"}
    placement = {c: (e["shard"], e["row_group"]) for c, e in entries.items()}

    assert placement == {"a": ("train-00000.parquet", 0), "b": ("train-00000.parquet", 1),
                         "c": ("train-00001.parquet", 0)}
    a, b = manifest.read_client("train", "a"), manifest.read_client("train", "b")
    assert (len(a.y), len(b.y)) == (3, 5)  # one row group each, not the whole shard
    assert np.array_equal(b.x, clients[1].x)
    # offset/length point at the row group's bytes: b's pixels are inside its range, not a's
    raw = (manifest.root / "train-00000.parquet").read_bytes()
    ea, eb = entries["a"], entries["b"]
    assert ea["offset"] + ea["length"] <= eb["offset"]
    assert clients[1].x.tobytes() in raw[eb["offset"] : eb["offset"] + eb["length"]]
    assert clients[1].x.tobytes() not in raw[ea["offset"] : ea["offset"] + ea["length"]]


def test_read_split_concatenates_the_clients_in_manifest_order(known_split):
    clients, manifest = known_split

    everything = manifest.read_split("train")

    assert np.array_equal(everything.y, np.concatenate([c.y for c in clients]))
    assert np.array_equal(everything.x, np.concatenate([c.x for c in clients]))


def test_reading_an_unknown_client_raises_naming_the_client_and_split(known_split):
    _, manifest = known_split

    with pytest.raises(shards.UnknownClientError, match="No client 'z' in split 'train'"):
        manifest.read_client("train", "z")


def test_writing_a_client_of_the_wrong_shape_is_rejected_naming_it(tmp_path):
    bad = shards.Client("odd", {"pixels": np.zeros((2, 3, 3, 1), np.float32), "label": np.zeros(2, np.int64)})

    with pytest.raises(shards.SchemaError, match=r"client 'odd', column 'pixels': expected examples of shape "
                                                r"\(2, 2, 1\)"):
        shards.write_dataset(tmp_path, {"train": [bad]}, SCHEMA, metadata={})
    assert not (tmp_path / shards.MANIFEST).exists()


# -- more partitions and the three splits of digits -----------------------------------------------


def test_pathological_partition_gives_each_client_exactly_k_classes_and_uses_every_example_once():
    parts = stage.pathological_partition(LABELS, 10, 2, 5, rng())

    assert [len(np.unique(LABELS[p])) for p in parts] == [2] * 10
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


def test_shard_partition_deals_label_sorted_shards_so_clients_see_few_classes():
    parts = stage.shard_partition(LABELS, 10, 2, 5, rng())

    assert sorted(len(p) for p in parts) == [60] * 10
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 4  # two shards of <= 2 classes each
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))
    with pytest.raises(stage.PartitionError, match="shards exceed"):
        stage.shard_partition(LABELS[:15], 10, 2, 1, rng())


def test_pathological_with_more_classes_than_exist_is_refused():
    with pytest.raises(stage.PartitionError, match="classes_per_client must be <= the 10 classes"):
        stage.pathological_partition(LABELS, 10, 11, 1, rng())


@pytest.mark.parametrize("split", ["within_client", "by_client"])
@pytest.mark.parametrize("partition", ["iid", "pathological", "shards"])
def test_digits_splits_by_client_or_within_clients(monkeypatch, tmp_path, split, partition):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path))
    cfg = ExperimentConfig(num_clients=8, clients_per_round=3, partition=partition, split=split, test_fraction=0.25)

    m = stage.stage_dataset(cfg).manifest

    train, test = set(m.client_ids("train")), set(m.client_ids("test"))
    assert len(train) == 8
    if split == "by_client":
        assert len(test) == 2 and not train & test  # held-out clients never train
    else:
        assert test == train  # the same clients' other examples
        for cid in train:
            n_train, n_test = m.client_entry("train", cid)["num_examples"], m.client_entry("test", cid)["num_examples"]
            assert n_train >= cfg.min_examples_per_client and abs(n_test - 0.25 * (n_train + n_test)) <= 1
    total = m.data["splits"]["train"]["num_examples"] + m.data["splits"]["test"]["num_examples"]
    assert total == 1797  # every example is in exactly one client and split
    assert m.data["settings"]["split"] == split


def test_two_processes_staging_the_same_data_at_once_end_with_one_complete_copy(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "from tasks import stage\nfrom tasks.config import ExperimentConfig\n"
        "s = stage.stage_dataset(ExperimentConfig(num_clients=5, clients_per_round=3, partition='iid'))\n"
        "print(s.path)\n"
    )
    env = {**os.environ, "FEDFLOW_DATA_DIR": str(tmp_path), "PYTHONPATH": str(paths.PROJECT_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outputs)) == 1
    [staged] = (tmp_path / "staged" / "digits").iterdir()  # no temp directories left behind
    m = shards.Manifest.read(staged)
    assert m.data["content_sha256"] == shards.manifest_digest(m.data)
    assert sum(m.client_entry("train", c)["num_examples"] for c in m.client_ids("train")) == len(
        m.read_split("train").y)
