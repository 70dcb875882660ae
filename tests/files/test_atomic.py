"""The one atomic write: whole files or none, temporary names that a resumed run can clear."""

from __future__ import annotations

import json
import os

import pytest

from maxlm.files import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and oct(path.stat().st_mode & 0o777) == "0o644"

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["out.json"]


def test_remove_stale_tmp_removes_only_its_own_temporaries(tmp_path):
    stale = atomic.temp_beside(tmp_path / "shard.jsonl.zst")
    (tmp_path / "notes.tmp-mine").write_text("a user's file")
    assert atomic.remove_stale_tmp(tmp_path) == 1
    assert not stale.exists() and (tmp_path / "notes.tmp-mine").exists()


def test_replace_dir_keeps_files_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    (out / "old-2.bin").write_text("an earlier run's surplus")
    new = tmp_path / "new"
    new.mkdir()
    (new / "old-1.bin").write_text("fresh")
    atomic.replace_dir(new, out, stale=("old-1.bin", "old-2.bin", "../mine.txt"))
    assert sorted(os.listdir(out)) == ["mine.txt", "old-1.bin"] and not new.exists()
    empty, fresh = tmp_path / "empty", tmp_path / "fresh"
    empty.mkdir()
    fresh.mkdir()
    (fresh / "a").write_text("a")
    atomic.replace_dir(fresh, empty)
    assert os.listdir(empty) == ["a"]
