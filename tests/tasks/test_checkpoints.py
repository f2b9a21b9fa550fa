import logging

import numpy as np
import pytest

from tasks.checkpoints import CheckpointStore, CorruptCheckpointError


def leaves(round_num):
    """A small model state whose values identify the round it was saved at."""
    return [
        np.full((3, 2), round_num, dtype=np.float32),
        np.arange(4, dtype=np.int64) + round_num,
        np.float32(round_num + 0.5),  # 0-d scalar, e.g. an optimizer's step size
        np.array([True, False]),
    ]


def assert_same_leaves(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        e = np.asarray(e)
        assert g.dtype == e.dtype and g.shape == e.shape
        assert np.array_equal(g, e)


def test_a_saved_checkpoint_loads_with_the_same_dtypes_shapes_and_values(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(7, leaves(7))

    checkpoint = store.load(7)

    assert checkpoint.round_num == 7
    assert_same_leaves(checkpoint.leaves, leaves(7))
    assert checkpoint.leaves[2].shape == () and checkpoint.leaves[2].dtype == np.float32


def test_only_the_newest_keep_checkpoints_are_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)

    for round_num in range(1, 6):
        store.save(round_num, leaves(round_num))

    assert store.rounds() == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round_000004.json", "round_000004.npz", "round_000005.json", "round_000005.npz"
    ]
    assert_same_leaves(store.load_latest().leaves, leaves(5))


def test_keep_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="keep must be >= 1. Got 0"):
        CheckpointStore(tmp_path, keep=0)


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, caplog, damage):
    store = CheckpointStore(tmp_path)
    store.save(1, leaves(1))
    store.save(2, leaves(2))
    newest = tmp_path / "round_000002.npz"
    data = bytearray(newest.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="tasks.checkpoints"):
        latest = store.load_latest()

    assert latest.round_num == 1
    assert_same_leaves(latest.leaves, leaves(1))
    assert store.latest_round() == 1
    assert "Checkpoint of round 2" in caplog.text and "falling back" in caplog.text


def test_loading_a_damaged_checkpoint_directly_raises_naming_its_round(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(3, leaves(3))
    (tmp_path / "round_000003.json").write_text('{"round": 3, "sha')

    with pytest.raises(CorruptCheckpointError, match="Checkpoint of round 3 is unreadable"):
        store.load(3)


def test_when_every_checkpoint_is_damaged_there_is_none(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, leaves(1))
    (tmp_path / "round_000001.npz").write_bytes(b"")

    assert store.load_latest() is None


def test_an_npz_without_its_json_is_not_a_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, leaves(1))
    store.save(2, leaves(2))
    (tmp_path / "round_000002.json").unlink()  # killed between writing the data and its metadata

    assert store.rounds() == [1]
    assert store.load_latest().round_num == 1


def test_an_empty_or_missing_directory_has_no_checkpoint(tmp_path):
    assert CheckpointStore(tmp_path).load_latest() is None
    assert CheckpointStore(tmp_path / "missing").latest_round() is None
    assert CheckpointStore(tmp_path / "missing").rounds() == []
