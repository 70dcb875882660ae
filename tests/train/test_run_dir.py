"""One `maxlm train` per run dir: a second one is refused naming the live process, a dead one's
lock is taken over, and an unwritable run_dir is one line before any work."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import write_tiny_config

from maxlm.cli import main as cli_main
from maxlm.train.run_dir import lock_path, locked


HOLD = "import sys, time\nfrom maxlm.train.run_dir import locked\nwith locked(sys.argv[1], int(sys.argv[2])):\n    print('locked', flush=True)\n    time.sleep(600)\n"


def hold_lock(run_dir: Path, process: int = 0) -> subprocess.Popen:
    """Returns a live process that holds the lock of `process` in `run_dir`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(process)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def tiny(tmp_path, shared_data):
    """A tiny pretraining config (2 steps, its own 400-piece tokenizer) in tmp_path."""
    return write_tiny_config(tmp_path, shared_data, checkpoint={"interval_steps": 2, "async_save": False})


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_second_train_is_refused_then_a_dead_owners_lock_is_taken_over(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        assert cli_main(["train", str(tiny)]) == 2
        err = one_error_line(capsys)
        assert f"pid {holder.pid}" in err and str(run) in err and "in use" in err
        # Refused before any work: the live run's files are untouched.
        assert sorted(p.name for p in run.iterdir()) == [".lock"] and not (tmp_path / "tok.model").exists()
    finally:
        holder.kill()
        holder.wait()
    assert str(holder.pid) in lock_path(run).read_text()  # the dead owner's lock still names it
    assert cli_main(["train", str(tiny)]) == 0
    assert (run / "checkpoints" / "2").is_dir() and (run / "metrics.jsonl").exists()
    assert lock_path(run).read_text() == ""  # released at the end of the run
    with locked(run):
        assert str(os.getpid()) in lock_path(run).read_text()


def test_each_process_of_a_run_locks_its_own_file(tmp_path):
    holder = hold_lock(tmp_path, process=1)
    try:
        with locked(tmp_path, 0):  # process 0 of the same run: its own file
            pass
        with pytest.raises(Exception, match=f"pid {holder.pid}"):
            with locked(tmp_path, 1):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with locked(tmp_path):
            raise RuntimeError("the run failed")
    with locked(tmp_path):
        pass


@pytest.mark.parametrize("bad", ["file", "under a file", "read-only"])
def test_unwritable_run_dir_is_one_line_before_any_work(tiny, tmp_path, capsys, bad):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory\n")
    run_dir, expected = {
        "file": (a_file, "is a file, not a directory"),
        "under a file": (a_file / "run", f"{a_file} is a file, not a directory"),
        "read-only": (Path("/sys/maxlm-run"), "cannot write there"),  # sysfs refuses new files, root's included
    }[bad]
    assert cli_main(["train", str(tiny), f"run_dir={run_dir}"]) == 2
    err = one_error_line(capsys)
    assert f"run_dir {run_dir}" in err and expected in err
    assert not (tmp_path / "tok.model").exists()  # nothing trained before the check


def test_full_disk_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("maxlm.files.writable.os.write", full)
    assert cli_main(["train", str(tiny)]) == 2
    assert "the disk is full" in one_error_line(capsys)


def test_full_disk_mid_run_is_one_line(tiny, capsys, monkeypatch):
    def fill(*_, **__):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/checkpoints/8")

    monkeypatch.setattr("maxlm.train.run.train", fill)
    assert cli_main(["train", str(tiny)]) == 2
    assert one_error_line(capsys) == "error: /runs/x/checkpoints/8: the disk is full (No space left on device)"


def test_a_foreign_non_empty_run_dir_is_refused_before_any_work(tiny, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine\n")
    assert cli_main(["train", str(tiny), f"run_dir={notes}"]) == 2
    err = one_error_line(capsys)
    assert f"run_dir {notes}: exists and is not empty" in err and "holds no maxlm run" in err
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"] and not (tmp_path / "tok.model").exists()


def test_an_export_dir_outside_the_run_must_be_empty_or_this_runs_own(tiny, tmp_path, capsys):
    foreign = tmp_path / "someone_elses_model"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}\n")
    assert cli_main(["train", str(tiny), f"export.hf_dir={foreign}"]) == 2
    assert f"export.hf_dir {foreign}: exists and is not empty" in one_error_line(capsys)
    assert (foreign / "config.json").read_text() == "{}\n" and not (tmp_path / "run").exists()
    own = tmp_path / "export"
    assert cli_main(["train", str(tiny), f"export.hf_dir={own}"]) == 0
    (own / "README.md").write_text("notes beside the export\n")
    # A rerun of the finished run exports again into its own export dir, keeping the user's file.
    assert cli_main(["train", str(tiny), f"export.hf_dir={own}"]) == 0
    assert (own / "config.json").is_file() and (own / "README.md").read_text() == "notes beside the export\n"


def test_temp_files_of_a_killed_run_are_removed_on_rerun(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("")  # a run that was killed while writing two of its files
    stale = [run / "metrics.jsonl.tmp-abcd1234", run / "config.yaml.tmp-x_y9z8w7"]
    for p in stale:
        p.write_text("half")
    assert cli_main(["train", str(tiny)]) == 0
    assert not any(p.exists() for p in stale) and (run / "checkpoints" / "2").is_dir()


def test_a_sample_prompt_that_cannot_fit_is_refused_before_training(tiny, tmp_path, capsys):
    long_prompt = "to be or not to be " * 200  # over tiny.yaml's 512 positions
    assert cli_main(["train", str(tiny), f"sample.prompts=[{long_prompt!r}]", "sample.max_new_tokens=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the tokenizer's training line
    assert "sample.prompts[0] is" in err and "exceeds model.max_seq_len=" in err
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "config.yaml").exists()
