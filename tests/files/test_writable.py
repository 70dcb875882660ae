"""Output paths are checked by a real write before any work: a file where a directory belongs, a
directory under a file, a read-only place and a full disk are one `error:` line naming the path,
for `maxlm curate`, `select`, `tokenizer train` (train and eval: tests/train/test_run_dir.py,
tests/eval/test_cli_errors.py)."""

import errno
import os
from pathlib import Path

import pytest

from maxlm.cli import main as cli_main
from maxlm.errors import MaxlmError
from maxlm.files.writable import check_writable_dir, check_writable_file

REPO = Path(__file__).resolve().parents[2]
READ_ONLY = Path("/sys/maxlm-out")  # sysfs refuses new files, root's included


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("x\n")
    return path


def test_a_directory_that_can_be_made_passes_and_is_not_created(tmp_path):
    assert check_writable_dir(tmp_path / "new" / "deeper", "--output") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []  # the probe is gone too


def test_each_fault_names_the_path_and_what_is_wrong(tmp_path, a_file):
    cases = [
        (lambda: check_writable_dir(a_file, "--output"), f"--output {a_file}: is a file, not a directory"),
        (lambda: check_writable_dir(a_file / "out", "--output"), f"--output {a_file}/out: cannot be created: {a_file} is a file, not a directory"),
        (lambda: check_writable_file(tmp_path, "--output"), f"--output {tmp_path}: is a directory, expected a file path"),
        (lambda: check_writable_file(READ_ONLY / "x.model", "--output"), f"--output {READ_ONLY}/x.model: cannot write there (in /sys)"),
    ]
    for check, message in cases:
        with pytest.raises(MaxlmError) as e:
            check()
        assert str(e.value).startswith(message), (str(e.value), message)


def test_a_full_disk_is_named(tmp_path, monkeypatch):
    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("maxlm.files.writable.os.write", full)
    with pytest.raises(MaxlmError, match=f"--output {tmp_path}/out: cannot write there \\(in {tmp_path}\\): the disk is full"):
        check_writable_dir(tmp_path / "out", "--output")
    assert list(tmp_path.iterdir()) == []


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("bad", ["file", "under a file", "read-only"])
def test_commands_refuse_an_unwritable_output_before_any_work(tmp_path, a_file, capsys, bad):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "p", "response": "r"}\n')
    text = tmp_path / "text.txt"
    text.write_text("some text to train on\n" * 50)
    where = {"file": a_file, "under a file": a_file / "out", "read-only": READ_ONLY}[bad]
    commands = {
        "curate": (["curate", str(REPO / "configs/curation/english_web.yaml"), "--input", str(text), "--output", str(where), "-q"], "--output"),
        "select": (["select", "kcenter", "--input", str(pool), "--budget", "1", "--output", str(where / "sel.jsonl"), "-q"], "--output"),
        "select folds": (["select", "folds", "--input", str(pool), "--k", "2", "--output-dir", str(where), "-q"], "--output-dir"),
        "tokenizer train": (["tokenizer", "train", "--input", str(text), "--output", str(where / "tok.model"), "--vocab-size", "300"], "--output"),
    }
    for name, (argv, flag) in commands.items():
        assert cli_main(argv) == 2, name
        err = one_error_line(capsys)
        assert f"{flag} {where}" in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "pool.jsonl", "text.txt"]


def test_tokenizer_vocab_too_small_for_the_text_says_so(tmp_path, capsys):
    text = tmp_path / "cjk.txt"
    # 400 distinct characters: with character_coverage 0.9995 nearly all must be pieces of their own.
    text.write_text("\n".join("".join(chr(0x4E00 + (i * 7 + j) % 400) for j in range(40)) for i in range(400)) + "\n")
    assert cli_main(["tokenizer", "train", "--input", str(text), "--output", str(tmp_path / "tok.model"), "--vocab-size", "300"]) == 2
    err = one_error_line(capsys)
    assert "--vocab-size 300 is too small for this text" in err and "too large" not in err and "set --vocab-size to at least" in err
    needed = int(err.rsplit("at least ", 1)[1])
    assert needed > 300
    assert cli_main(["tokenizer", "train", "--input", str(text), "--output", str(tmp_path / "tok.model"), "--vocab-size", str(needed)]) == 0
