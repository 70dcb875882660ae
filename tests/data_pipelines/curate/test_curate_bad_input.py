"""Bad input and bad output places in curation: a truncated .gz input is named with the line it
was cut at, in one console line and in the report; an output directory that is a file, read-only,
full or holding the inputs gives one `error:` line (exit 2) and leaves no temporary files."""

from __future__ import annotations

import errno
import gzip
import json
import zlib
from pathlib import Path

import pytest

from curate_outputs import read_output
from data_pipelines.curate.cli import main as cli_main
from maxlm.files import atomic, writable, writers

PIPELINE = "stages:\n  - length: {min_words: 1}\n  - exact_dedup: {}\n"


def _gsm8k_lines(shared_data: Path, n: int) -> list[bytes]:
    """Returns the first `n` gsm8k records as jsonl lines, with their text under `text`."""
    out = []
    with open(shared_data / "sft" / "gsm8k_train.jsonl", "rb") as f:
        for raw, _ in zip(f, range(n)):
            rec = json.loads(raw)
            out.append(json.dumps({"text": rec["question"] + "\n" + rec["answer"]}).encode() + b"\n")
    return out


def _whole_lines_of(cut: bytes) -> int:
    """Returns how many complete lines a gzip prefix inflates to (zlib directly, not the reader under test)."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    return d.decompress(cut).count(b"\n")


def _curate(tmp_path: Path, pattern: str, out: Path, *extra: str) -> int:
    yaml = tmp_path / "p.yaml"
    yaml.write_text(PIPELINE)
    return cli_main(["curate", str(yaml), "--input", pattern, "--output", str(out), "-q", *extra])


def _tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"*{atomic.TMP_MARK}*")] if root.exists() else []


def test_truncated_gzip_is_named_with_its_line_on_the_console_and_in_the_report(tmp_path, shared_data, capsys):
    lines = _gsm8k_lines(shared_data, 2000)
    blob = gzip.compress(b"".join(lines))
    cut = blob[: len(blob) * 3 // 5]
    whole = _whole_lines_of(cut)
    assert 0 < whole < len(lines)
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "cut.jsonl.gz").write_bytes(cut)
    (inp / "whole.jsonl.gz").write_bytes(gzip.compress(b"".join(_gsm8k_lines(shared_data, 3010)[3000:])))
    assert _curate(tmp_path, str(inp / "*.gz"), tmp_path / "out") == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and captured.err.count("\n") == 1  # one line, and nothing else on stderr
    assert f"{inp / 'cut.jsonl.gz'}: cut at line {whole + 1} " in warnings[0]
    assert "the stream ends there" in warnings[0] and f"the {whole} records before it were read" in warnings[0]
    assert "1 input file(s) cut short" in captured.out
    # every whole line before the cut, and the other file, is curated
    assert len(read_output(tmp_path / "out")) == whole + 10
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["totals"]["cut_inputs"] == 1 and report["totals"]["bad_records"] == 0
    (c,) = report["bad_records"]["cut_inputs"]
    assert c["where"] == f"cut.jsonl.gz:{whole + 1}" and c["records_before"] == whole
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Input files cut short (1)" in md and warnings[0].removeprefix("warning: ") in md


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _small_input(tmp_path: Path, shared_data: Path, n: int = 40) -> str:
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    lines = _gsm8k_lines(shared_data, n)
    (inp / "a.jsonl").write_bytes(b"".join(lines[: n // 2]))
    (inp / "b.jsonl").write_bytes(b"".join(lines[n // 2:]))
    return str(inp / "*.jsonl")


def test_output_that_is_a_file_is_one_error_line(tmp_path, shared_data, capsys):
    pattern = _small_input(tmp_path, shared_data)
    (tmp_path / "afile").write_text("mine")
    assert _curate(tmp_path, pattern, tmp_path / "afile") == 2
    assert "is a file, not a directory" in _one_error_line(capsys.readouterr().err)
    assert (tmp_path / "afile").read_text() == "mine"


def test_read_only_output_is_one_error_line(tmp_path, shared_data, capsys, monkeypatch):
    pattern = _small_input(tmp_path, shared_data)
    real = writable.tempfile.mkstemp

    def read_only(*a, dir=None, **k):  # a read-only mount, which root (these tests' user, often) cannot fake with chmod
        if dir is not None and Path(dir).resolve().is_relative_to((tmp_path / "ro").resolve()):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(writable.tempfile, "mkstemp", read_only)
    assert _curate(tmp_path, pattern, tmp_path / "ro" / "out") == 2
    assert "read-only file system" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "ro" / "out").exists() and not _tmp_files(tmp_path / "ro")


class _FullDisk:
    """A file whose writes fail with ENOSPC, as a full disk's do (the kernel names no file)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fill_disk(monkeypatch, module, when):
    """Makes `module`'s open() hand out full-disk files for paths where `when(path)` holds."""
    real = open

    def full_open(path, mode="r", *a, **k):
        f = real(path, mode, *a, **k)
        return _FullDisk(f) if "w" in mode and when(str(path)) else f

    monkeypatch.setattr(module, "open", full_open, raising=False)


@pytest.mark.parametrize("where, workers", [("shard", 1), ("shard", 2), ("report", 1)])
def test_full_disk_is_one_error_line_leaves_no_temp_files_and_resumes(tmp_path, shared_data, capsys, monkeypatch, where, workers):
    pattern = _small_input(tmp_path, shared_data)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        if where == "shard":  # the curated shards and _work files, written by the streaming writers
            _fill_disk(m, writers, lambda p: "shard-00001" in p)
        else:  # markers, manifest and report, written by the one atomic writer
            _fill_disk(m, atomic, lambda p: "report" in Path(p).name)
        assert _curate(tmp_path, pattern, out, "--workers", str(workers)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: --output {out}: writing failed") and "the disk is full" in line
    assert not _tmp_files(out)
    assert not (out / "report.json").exists()  # a report is written only by a finished run
    if where == "shard":
        assert not (out / "shard-00001.jsonl.zst").exists()
    # the same command, with space again, finishes the run
    assert _curate(tmp_path, pattern, out, "--workers", str(workers)) == 0
    assert len(read_output(out)) == 40 and not _tmp_files(out)


def test_output_over_the_inputs_is_refused(tmp_path, shared_data, capsys):
    pattern = _small_input(tmp_path, shared_data)
    before = {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()}
    assert _curate(tmp_path, pattern, tmp_path / "in") == 2
    assert "holds the input file" in _one_error_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == before
    # a run whose output is the folder above the inputs would mix its shards with them: refused too
    assert _curate(tmp_path, pattern, tmp_path) == 2
    assert "holds the input file" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("ok", [True, False])
def test_a_writer_that_cannot_finish_leaves_no_temp_file(tmp_path, monkeypatch, ok):
    _fill_disk(monkeypatch, writers, lambda p: True)
    w = writers.JsonlZstWriter(tmp_path / "x.jsonl.zst")
    w.write({"text": "a"})
    if ok:  # the error is the caller's to see
        with pytest.raises(OSError, match="No space"):
            w.close(ok)
    else:  # an error is already on its way up: a second one from the same disk must not hide it
        w.close(ok)
    assert list(tmp_path.iterdir()) == []
