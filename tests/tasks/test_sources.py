"""Staging the formats FL researchers have (TFF h5 ClientData, LEAF JSON, CSV/Parquet tables) from
small files written here in the same layouts, and every malformed input giving a clear error that
leaves nothing staged."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from tasks import paths, shards, stage
from tasks.config import ExperimentConfig
from tasks.shards import ClientIdError, SchemaError
from tasks.sources.base import SourceError

BASE = {"num_clients": 4, "clients_per_round": 2, "min_examples_per_client": 3}


@pytest.fixture(autouse=True)
def data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDFLOW_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def emnist_like(rng, n_clients=6, low=8, high=20):
    """Per-writer examples as TFF's EMNIST h5 holds them: pixels (n, 28, 28) float32, label (n,) int32."""
    out = {}
    for i in range(n_clients):
        n = int(rng.integers(low, high))
        out[f"f{i:04d}_{i % 3:02d}"] = {
            "pixels": rng.random((n, 28, 28), dtype=np.float32),
            "label": rng.integers(0, 10, n).astype(np.int32),
        }
    return out


def write_h5(path, clients):
    with h5py.File(path, "w") as f:
        for cid, features in clients.items():
            group = f.create_group(f"examples/{cid}")
            for name, values in features.items():
                group[name] = values
    return path


def write_leaf(path, users: dict[str, tuple[list, list]], num_samples: dict[str, int] | None = None):
    data = {
        "users": list(users),
        "num_samples": [(num_samples or {}).get(u, len(xy[0])) for u, xy in users.items()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }
    path.write_text(json.dumps(data))
    return path


def table_frame(rng, n_clients=6, features=4):
    rows = []
    for i in range(n_clients):
        for _ in range(int(rng.integers(6, 12))):
            rows.append({"user": f"u{i}", **{f"f{j}": float(rng.random()) for j in range(features)},
                         "label": int(rng.integers(0, 3))})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # clients' rows interleaved


def nothing_staged(data_dir):
    root = data_dir / "staged"
    return not root.exists() or not any(p for p in root.rglob("*") if p.is_file() or p.name.startswith(".tmp"))


# -- h5 (TFF ClientData) --------------------------------------------------------------------------


def test_an_h5_clientdata_file_stages_with_its_natural_per_writer_partition(tmp_path):
    rng = np.random.default_rng(0)
    clients = emnist_like(rng)
    train = write_h5(tmp_path / "fed_emnist_digitsonly_train.h5", clients)
    test = write_h5(tmp_path / "fed_emnist_digitsonly_test.h5",
                    {cid: {k: v[:3] for k, v in f.items()} for cid, f in clients.items()})

    staged = stage.stage_dataset(ExperimentConfig(dataset="h5", source_path=str(train),
                                                  source_test_path=str(test), **BASE))

    m = staged.manifest
    assert m.kind == "image" and m.x_feature == shards.Column("pixels", "float32", (28, 28))
    assert m.data["settings"]["split"] == "source"
    assert len(m.client_ids("train")) == 4 and set(m.client_ids("train")) <= set(clients)
    assert set(m.client_ids("test")) == set(m.client_ids("train"))  # TFF: the same writers' other examples
    for cid in m.client_ids("train"):
        got = m.read_client("train", cid)
        assert np.array_equal(got.x, clients[cid]["pixels"])
        assert np.array_equal(got.y, clients[cid]["label"])
    assert m.data["source"]["files"]["train"]["file"] == "fed_emnist_digitsonly_train.h5"
    assert m.data["source_clients"] == 6


def test_cifar_like_uint8_images_keep_their_dtype_and_the_label_feature_is_chosen(tmp_path):
    rng = np.random.default_rng(1)
    clients = {f"c{i}": {"image": rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
                         "coarse_label": rng.integers(0, 20, 5), "label": rng.integers(0, 100, 5)}
               for i in range(5)}
    path = write_h5(tmp_path / "cifar.h5", clients)

    staged = stage.stage_dataset(ExperimentConfig(dataset="h5", source_path=str(path), label_column="coarse_label",
                                                  num_classes=20, **BASE))

    m = staged.manifest
    assert m.x_feature == shards.Column("image", "uint8", (32, 32, 3)) and m.num_classes == 20
    assert m.schema.label == "coarse_label"
    for cid in m.client_ids("train"):
        train, test = m.read_client("train", cid), m.read_client("test", cid)
        assert sorted(np.concatenate([train.y, test.y])) == sorted(clients[cid]["coarse_label"])
        assert train.x.dtype == np.uint8


def test_shakespeare_like_h5_snippets_stage_as_text(tmp_path):
    clients = {"THE_TEMPEST_ARIEL": {"snippets": np.array([b"Full fathom five", b"thy father lies;",
                                                          b"Of his bones", b"are coral made."])},
               "HAMLET_HAMLET": {"snippets": np.array([b"To be, or not", b"to be", b"that is the question"])}}
    path = write_h5(tmp_path / "shakespeare_train.h5", clients)

    staged = stage.stage_dataset(ExperimentConfig(dataset="h5", source_path=str(path), num_clients=2,
                                                  clients_per_round=1, min_examples_per_client=1))

    m = staged.manifest
    assert m.kind == "text"
    lines = np.concatenate([m.read_columns("train", c)["snippets"] for c in m.client_ids("train")]
                           + [m.read_columns("test", c)["snippets"] for c in m.client_ids("test")])
    assert sorted(lines) == sorted(s.decode() for f in clients.values() for s in f["snippets"])


# -- TFF 0.87 SqlClientData (tests/trainer/test_tff_sqlite_parity.py reads a file TFF itself wrote) ------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def tf_example(pixels: np.ndarray, label: int) -> bytes:
    """A serialized tf.train.Example, encoded by hand (the wire format TensorFlow writes)."""
    floats = _len_field(2, _len_field(1, np.asarray(pixels, "<f4").tobytes()))  # Feature.float_list, packed
    ints = _len_field(3, _len_field(1, _varint(label)))  # Feature.int64_list, packed
    entries = b"".join(_len_field(1, _len_field(1, k.encode()) + _len_field(2, v))
                       for k, v in (("pixels", floats), ("label", ints)))
    return _len_field(1, entries)


def write_tff_sqlite(path, splits: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], *, corrupt: str | None = None):
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE examples (split_name TEXT, client_id TEXT, serialized_example_proto BLOB)")
        db.execute("CREATE TABLE client_metadata (client_id TEXT, split_name TEXT, num_examples INTEGER)")
        for split, clients in splits.items():
            for cid, (pixels, labels) in clients.items():
                for p, y in zip(pixels, labels, strict=True):
                    blob = tf_example(p, int(y)) if cid != corrupt else b"\x0a\xff\x01garbage"
                    db.execute("INSERT INTO examples VALUES (?, ?, ?)", (split, cid, blob))
                db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, len(labels)))
    return path


def emnist_sql_clients(rng, n=5):
    return {f"f{i:04d}_{i}": (rng.random((6 + i, 784), dtype=np.float32), rng.integers(0, 10, 6 + i)) for i in range(n)}


def test_a_tff_sqlite_file_stages_with_its_own_test_split_and_28x28_images(tmp_path):
    rng = np.random.default_rng(8)
    train, test = emnist_sql_clients(rng), emnist_sql_clients(rng)
    path = write_tff_sqlite(tmp_path / "emnist_all.sqlite", {"digits_only_train": train, "digits_only_test": test})

    m = stage.stage_dataset(ExperimentConfig(dataset="tff_sqlite", source_path=str(path), **BASE)).manifest

    assert m.kind == "image" and m.x_feature.shape == (28, 28) and m.data["settings"]["split"] == "source"
    assert set(m.client_ids("test")) == set(m.client_ids("train"))  # the same writers' test examples
    for cid in m.client_ids("train"):
        assert np.array_equal(m.read_client("train", cid).x.reshape(-1, 784), train[cid][0])
        assert np.array_equal(m.read_client("test", cid).y, test[cid][1])


# -- LEAF JSON ------------------------------------------------------------------------------------


def test_leaf_femnist_json_stages_as_images_with_feature_shape(tmp_path):
    rng = np.random.default_rng(2)
    users = {f"f{i:04d}_{i}": (rng.random((7 + i, 784)).round(3).tolist(), rng.integers(0, 62, 7 + i).tolist())
             for i in range(5)}
    (tmp_path / "train").mkdir()
    write_leaf(tmp_path / "train" / "all_data_0.json", dict(list(users.items())[:3]))
    write_leaf(tmp_path / "train" / "all_data_1.json", dict(list(users.items())[3:]))

    staged = stage.stage_dataset(ExperimentConfig(dataset="leaf", source_path=str(tmp_path / "train"),
                                                  feature_shape="28,28", num_classes=62, **BASE))

    m = staged.manifest
    assert m.kind == "image" and m.x_feature.shape == (28, 28) and m.num_classes == 62
    train_and_test = {cid: np.concatenate([m.read_client(s, cid).y for s in ("train", "test")])
                      for cid in m.client_ids("train")}
    for cid, labels in train_and_test.items():
        assert sorted(labels) == sorted(users[cid][1])  # within_client: the user's examples, split in two


def test_leaf_shakespeare_json_stages_as_text_with_a_target_column(tmp_path):
    users = {"ROMEO": (["But soft, what light through yonder window brea"] * 6, ["k"] * 6),
             "JULIET": (["O Romeo, Romeo, wherefore art thou Romeo? Den"] * 5, ["y"] * 5)}
    path = write_leaf(tmp_path / "shakespeare.json", users)

    staged = stage.stage_dataset(ExperimentConfig(dataset="leaf", source_path=str(path), num_clients=2,
                                                  clients_per_round=1, min_examples_per_client=2))

    m = staged.manifest
    assert m.kind == "text" and [c.name for c in m.schema.columns] == ["x", "target"]
    assert set(m.read_columns("train", "ROMEO")["target"]) == {"k"}


# -- CSV / Parquet tables -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_is_grouped_by_its_client_column_keeping_row_order(tmp_path, suffix, monkeypatch):
    frame = table_frame(np.random.default_rng(3))
    path = tmp_path / f"examples{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    monkeypatch.setattr("tasks.sources.table.BUCKET_BYTES", 200)  # force several hash buckets

    staged = stage.stage_dataset(ExperimentConfig(dataset="table", source_path=str(path), client_column="user",
                                                  feature_columns="f0,f1,f2,f3", split="by_client",
                                                  test_fraction=0.25, **BASE))

    m = staged.manifest
    assert m.kind == "vector" and m.x_feature.shape == (4,)
    ids = m.client_ids("train") + m.client_ids("test")
    assert len(m.client_ids("train")) == 4 and len(m.client_ids("test")) == 1
    assert not set(m.client_ids("train")) & set(m.client_ids("test"))
    for cid in ids:
        split = "train" if cid in m.client_ids("train") else "test"
        rows = frame[frame.user == cid]
        got = m.read_client(split, cid)
        assert np.allclose(got.x, rows[["f0", "f1", "f2", "f3"]].to_numpy(np.float32))
        assert np.array_equal(got.y, rows.label.to_numpy())
    assert not any(p.is_dir() for p in staged.path.iterdir())  # the reader's bucket files are gone


def test_table_features_reshape_into_images(tmp_path):
    rng = np.random.default_rng(4)
    frame = table_frame(rng, features=16)
    frame.to_parquet(tmp_path / "t.parquet", index=False)

    staged = stage.stage_dataset(ExperimentConfig(dataset="table", source_path=str(tmp_path / "t.parquet"),
                                                  client_column="user", feature_shape="4, 4", **BASE))

    assert staged.manifest.kind == "image" and staged.manifest.x_feature.shape == (4, 4)


# -- content address: the source's bytes count, not its path -----------------------------------------


def test_restaging_is_a_no_op_and_a_changed_source_file_is_a_new_fingerprint(tmp_path):
    rng = np.random.default_rng(5)
    path = write_h5(tmp_path / "e.h5", emnist_like(rng))
    cfg = ExperimentConfig(dataset="h5", source_path=str(path), **BASE)
    first = stage.stage_dataset(cfg)

    assert stage.stage_dataset(cfg).reused
    write_h5(path, emnist_like(np.random.default_rng(6)))
    changed = stage.stage_dataset(cfg)

    assert not changed.reused and changed.fingerprint != first.fingerprint


def test_unicode_client_ids_are_kept_exactly_as_data(tmp_path):
    users = {"ユーザー_1": ([[0.1, 0.2]] * 4, [0] * 4), "Zoë": ([[0.3, 0.4]] * 4, [1] * 4),
             "user 3": ([[0.5, 0.6]] * 4, [1] * 4)}
    path = write_leaf(tmp_path / "u.json", users)

    staged = stage.stage_dataset(ExperimentConfig(dataset="leaf", source_path=str(path), num_clients=3,
                                                  clients_per_round=1, min_examples_per_client=1))

    assert sorted(staged.manifest.client_ids("train")) == sorted(users)
    assert all(".parquet" in p.name or p.name == "manifest.json" for p in staged.path.iterdir())


# -- bad input: a clear error, nothing staged --------------------------------------------------------


def _h5(tmp_path, mutate):
    clients = emnist_like(np.random.default_rng(9))
    mutate(clients)
    return {"dataset": "h5", "source_path": str(write_h5(tmp_path / "bad.h5", clients))}


def _leaf(tmp_path, users, num_samples=None, raw=None):
    path = tmp_path / "bad.json"
    if raw is not None:
        path.write_text(raw)
    else:
        write_leaf(path, users, num_samples)
    return {"dataset": "leaf", "source_path": str(path)}


def _table(tmp_path, frame, suffix=".csv", **extra):
    path = tmp_path / f"bad{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    return {"dataset": "table", "source_path": str(path), "client_column": "user", **extra}


def _users(n=4, k=5, width=2):
    return {f"u{i}": ([[0.5] * width] * k, [i % 2] * k) for i in range(n)}


def _rename_user(users, old, new):
    users[new] = users.pop(old)
    return users


def _truncated_parquet(tmp_path):
    table_frame(np.random.default_rng(0)).to_parquet(tmp_path / "t.parquet", index=False)
    raw = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(raw[: len(raw) // 2])
    return {"dataset": "table", "source_path": str(tmp_path / "t.parquet"), "client_column": "user"}


def _without(key):
    def mutate(clients):
        del clients[sorted(clients)[2]][key]
    return mutate


def _sqlite(tmp_path, **kwargs):
    clients = emnist_sql_clients(np.random.default_rng(1))
    return {"dataset": "tff_sqlite", "split": "within_client",
            "source_path": str(write_tff_sqlite(tmp_path / "bad.sqlite", {"train": clients}, **kwargs))}


def _sqlite_miscounted(tmp_path):
    settings = _sqlite(tmp_path)
    import sqlite3

    with sqlite3.connect(settings["source_path"]) as db:
        db.execute("UPDATE client_metadata SET num_examples = num_examples + 1")
    return settings


BAD_INPUTS = {
    "TFF SQLite file that is not SQLite": (lambda t: (t / "x.sqlite").write_text("nope" * 100) and
                                           {"dataset": "tff_sqlite", "source_path": str(t / "x.sqlite")},
                                           SourceError, "not a TFF SqlClientData file"),
    "TFF SQLite example that is not a tf.train.Example": (lambda t: _sqlite(t, corrupt="f0000_0"), SourceError,
                                                          "not a valid tf.train.Example"),
    "TFF SQLite metadata disagreeing with the examples": (_sqlite_miscounted, SourceError,
                                                         "client_metadata says"),
    "source path missing": (lambda t: {"dataset": "h5", "source_path": str(t / "nope.h5")}, SourceError,
                            "does not exist"),
    "h5 not an HDF5 file": (lambda t: (t / "x.h5").write_text("not hdf5") and
                            {"dataset": "h5", "source_path": str(t / "x.h5")}, SourceError, "not a readable HDF5"),
    "h5 without an examples group": (lambda t: _h5_raw(t, lambda f: f.create_group("data")), SourceError,
                                     "no 'examples' group"),
    "h5 with zero clients": (lambda t: _h5_raw(t, lambda f: f.create_group("examples")), SourceError,
                             "has no clients"),
    "h5 client missing a feature": (lambda t: _h5(t, _without("label")), SourceError, "lacks feature 'label'"),
    "h5 features of different lengths": (lambda t: _h5(t, lambda c: c[sorted(c)[1]].update(
        label=c[sorted(c)[1]]["label"][:-1])), SchemaError, "columns have different lengths"),
    "h5 labels that are not whole numbers": (lambda t: _h5(t, lambda c: c[sorted(c)[0]].update(
        label=np.full(len(c[sorted(c)[0]]["label"]), 1.5))), SchemaError, "expected whole numbers"),
    "h5 negative labels": (lambda t: _h5(t, lambda c: c[sorted(c)[0]].update(
        label=-np.ones(len(c[sorted(c)[0]]["label"]), np.int32))), SchemaError, "labels must be >= 0"),
    "h5 text that is not UTF-8": (lambda t: {"dataset": "h5", "source_path": str(write_h5(t / "s.h5", {
        f"c{i}": {"snippets": np.array([b"ok line", b"\xff\xfe broken", b"x", b"y", b"z", b"w"])}
        for i in range(4)}))},
        SourceError, "not UTF-8"),
    "feature_shape that does not fit": (lambda t: {**_h5(t, lambda _: None), "feature_shape": "27,27"},
                                        SourceError, "does not hold the (28, 28) values"),
    "LEAF num_samples disagreeing with the data": (lambda t: _leaf(t, _users(), {"u1": 7}), SourceError,
                                                   "num_samples says 7, user_data has 5"),
    "LEAF users and num_samples of different lengths": (lambda t: _leaf(t, None, raw=json.dumps(
        {"users": ["a", "b"], "num_samples": [1], "user_data": {}})), SourceError, "must be lists of the same length"),
    "LEAF truncated JSON": (lambda t: _leaf(t, None, raw='{"users": ["a"], "num_sam'), SourceError,
                            "not valid JSON"),
    "LEAF missing keys": (lambda t: _leaf(t, None, raw=json.dumps({"users": []})), SourceError,
                          "missing key(s) ['num_samples', 'user_data']"),
    "LEAF user without user_data": (lambda t: _leaf(t, None, raw=json.dumps(
        {"users": ["a"], "num_samples": [1], "user_data": {}})), SourceError, "has no user_data entry"),
    "LEAF string labels for numeric features": (lambda t: _leaf(t, {"a": ([[1.0]] * 5, ["cat"] * 5),
                                                                    **_users()}), SourceError,
                                                "needs integer class labels"),
    "client id with a path separator": (lambda t: _leaf(t, _rename_user(_users(), "u0", "../etc/passwd")),
                                        ClientIdError, "must not contain path separators"),
    "client id '..'": (lambda t: _leaf(t, _rename_user(_users(), "u0", "..")), ClientIdError,
                       "must not contain path separators or be '.'/'..'"),
    "client id with a backslash": (lambda t: _leaf(t, _rename_user(_users(), "u0", "a\\b")), ClientIdError,
                                   "path separators"),
    "very long client id": (lambda t: _leaf(t, _rename_user(_users(), "u0", "x" * 300)), ClientIdError,
                            "at most 256 bytes"),
    "client id with a control character": (lambda t: _leaf(t, _rename_user(_users(), "u0", "a\nb")),
                                           ClientIdError, "control"),
    "blank client id": (lambda t: _leaf(t, _rename_user(_users(), "u0", "  ")), ClientIdError, "non-blank"),
    "table missing a column": (lambda t: _table(t, table_frame(np.random.default_rng(0)).drop(columns="label")),
                               SourceError, "missing column(s) ['label']"),
    "table with text labels": (lambda t: _table(t, table_frame(np.random.default_rng(0)).assign(label="cat")),
                               SourceError, "must hold integer classes"),
    "table feature column of text": (lambda t: _table(t, table_frame(np.random.default_rng(0)).assign(f1="x"),
                                                      feature_columns="f0,f1"), SourceError,
                                     "feature columns must be numeric"),
    "table row without a client id": (lambda t: _table(t, table_frame(np.random.default_rng(0)).assign(
        user=lambda f: f.user.where(f.index != 3, None)), suffix=".parquet"), SourceError, "has no 'user'"),
    "table truncated Parquet": (_truncated_parquet, SourceError, "cannot be read"),
    "table of another format": (lambda t: (t / "x.xlsx").write_text("x") and
                                {"dataset": "table", "source_path": str(t / "x.xlsx")}, SourceError,
                                "expected a .csv or .parquet file"),
    "more clients than the source has": (lambda t: {**_leaf(t, _users(n=3)), "num_clients": 5, "clients_per_round": 1,
                                                    "min_examples_per_client": 1},
                                         stage.PartitionError, "leaf source has 3 clients with >= 2 examples (of 3; 2 keep 1 for training "
                                         "after the within_client test split); the config needs 5"),
    "clients below the minimum are not enough": (lambda t: {**_leaf(t, _users(n=5, k=2)),
                                                            "min_examples_per_client": 3},
                                                 stage.PartitionError, "leaf source has 0 clients with >= 4 examples (of 5; 4 keep 3"),
}


def _h5_raw(tmp_path, build):
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        build(f)
    return {"dataset": "h5", "source_path": str(tmp_path / "raw.h5")}


def test_there_are_at_least_twenty_bad_inputs():
    assert len(BAD_INPUTS) >= 20


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_naming_the_problem_and_nothing_is_staged(case, tmp_path, data_dir):
    make, error, message = BAD_INPUTS[case]
    settings = {**BASE, "split": "within_client", **make(tmp_path)}

    with pytest.raises(error) as e:
        stage.stage_dataset(ExperimentConfig(**settings))

    assert message in str(e.value)
    assert nothing_staged(data_dir), sorted(str(p) for p in (paths.staged_root()).rglob("*"))
