"""The shared output check: no output replaces an input, another output or a foreign directory."""

from __future__ import annotations

import pytest

from maxlm.errors import MaxlmError
from maxlm.files.outputs import check_output, check_output_dir


def test_output_that_is_an_input_needs_overwrite(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    with pytest.raises(MaxlmError, match=r"--output .*in.jsonl: is also the input \(--input\).*--overwrite"):
        check_output({"--output": tmp_path / "x" / ".." / "in.jsonl"}, {"--input": src})
    check_output({"--output": src}, {"--input": src}, overwrite=True)
    with pytest.raises(MaxlmError, match=r"is also the input \(--input\) and would replace it; choose another path$"):
        check_output({"--output": src}, {"--input": src}, overwrite=None)  # a command without --overwrite
    check_output({"--output": tmp_path / "new.jsonl"}, {"--input": src})


def test_two_outputs_may_not_be_one_file_and_no_output_is_a_dir(tmp_path):
    with pytest.raises(MaxlmError, match="--b and --a are one file"):
        check_output({"--a": tmp_path / "o.jsonl", "--b": tmp_path / "o.jsonl"}, overwrite=True)
    with pytest.raises(MaxlmError, match="is a directory"):
        check_output({"--a": tmp_path})


def test_output_dir_must_be_empty_ours_or_overwritten(tmp_path):
    check_output_dir(tmp_path / "new", "--out")
    check_output_dir(tmp_path, "--out")  # empty
    (tmp_path / "f").write_text("x")
    with pytest.raises(MaxlmError, match=r"--out .*: exists and is not empty; .*--overwrite"):
        check_output_dir(tmp_path, "--out")
    check_output_dir(tmp_path, "--out", overwrite=True)
    check_output_dir(tmp_path, "--out", ours=True)
    with pytest.raises(MaxlmError, match="is a file"):
        check_output_dir(tmp_path / "f", "--out", overwrite=True)


def test_another_processs_write_probe_does_not_make_a_directory_foreign(tmp_path):
    from maxlm.files.writable import PROBE_PREFIX

    (tmp_path / f"{PROBE_PREFIX}abc123").write_text("")  # process 1 probing the run_dir while process 0 checks it
    check_output_dir(tmp_path, "run_dir", None)
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(MaxlmError, match="exists and is not empty"):
        check_output_dir(tmp_path, "run_dir", None)


def test_ours_is_asked_after_the_listing_so_a_lock_taken_meanwhile_counts(tmp_path):
    # Process 0 of a run locks the empty run_dir while process 1 checks it: process 1 must see the lock.
    asked = []

    def ours():
        asked.append(sorted(p.name for p in tmp_path.iterdir()))
        return (tmp_path / ".lock").exists()

    check_output_dir(tmp_path, "run_dir", None, ours=ours)
    assert asked == []  # empty: nothing to ask about
    (tmp_path / ".lock").write_text("")
    check_output_dir(tmp_path, "run_dir", None, ours=ours)
    assert asked == [[".lock"]]
    (tmp_path / ".lock").unlink()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MaxlmError, match="exists and is not empty"):
        check_output_dir(tmp_path, "run_dir", None, ours=ours)
