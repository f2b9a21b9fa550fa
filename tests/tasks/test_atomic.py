"""Atomic replacement of a whole directory (an exported model): the target is the old or the new one."""

from __future__ import annotations

from tasks import atomic


def test_replace_dir_puts_the_new_directory_in_place_and_leaves_no_old_copy(tmp_path):
    target, new = tmp_path / "model", tmp_path / ".model-tmp"
    target.mkdir()
    (target / "weights").write_text("round 3")
    new.mkdir()
    (new / "weights").write_text("round 5")
    atomic.replace_dir(new, target)
    assert (target / "weights").read_text() == "round 5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    fresh = tmp_path / ".fresh"
    fresh.mkdir()
    atomic.replace_dir(fresh, tmp_path / "first")  # no target yet: just renamed into place
    assert (tmp_path / "first").is_dir() and not fresh.exists()
