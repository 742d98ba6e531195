"""Atomic writes: the target holds the old bytes or the new ones, and no temp file is left behind."""
from __future__ import annotations

import pytest

from trainable.files import is_image_name, write_atomic, write_bytes_atomic, write_text_atomic


def test_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "state.json"
    write_text_atomic(target, "old")
    write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    write_text_atomic(target, "old")

    def half_then_fail(handle):
        handle.write(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_image_names_by_suffix_in_any_case():
    assert is_image_name("a/b.JPG") and is_image_name("x.webp") and is_image_name("y.png")
    assert not is_image_name("notes.txt") and not is_image_name("images.npz") and not is_image_name("png")
