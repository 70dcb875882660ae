"""Resumable outputs of the synth pipelines: a JSONL file appended one batch at a time, and a
small progress file beside it with the counts that the records themselves do not show.

A batch is written with one write, then flushed and fsynced, so a crash loses at most the
batch in flight; a torn last line (a crash inside that write) is cut off on the next start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from maxlm.errors import MaxlmError
from maxlm.files.atomic import write_json
from maxlm.files.formats import BadRecord
from maxlm.files.readers import iter_records
from maxlm.files.writers import append_jsonl, cut_torn_tail


class JsonlOutput:
    """A JSONL file of records; `.records` holds what earlier runs wrote, `append` adds a batch."""

    def __init__(self, path: str | os.PathLike, log=lambda msg: None):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            self._read_existing(log)

    def _read_existing(self, log) -> None:
        cut = cut_torn_tail(self.path)
        if cut:
            log(f"{self.path}: dropping an incomplete last line ({cut} bytes) left by an interrupted run")
        for lineno, record in iter_records(str(self.path), "jsonl"):
            if isinstance(record, BadRecord):
                raise MaxlmError(f"{self.path}:{lineno}: {record.problem} in an earlier run's output")
            if not isinstance(record, dict):
                raise MaxlmError(f"{self.path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            self.records.append(record)

    def append(self, records: list[dict]) -> None:
        """Appends `records` durably: one write, flush, fsync."""
        append_jsonl(self.path, records)
        self.records.extend(records)


def progress_path(output: str | os.PathLike) -> Path:
    """Returns the progress file kept beside an output file."""
    output = Path(output)
    return output.with_name(output.name + ".progress.json")


def read_progress(output: str | os.PathLike) -> dict:
    """Returns the saved progress of `output`, or {} when there is none."""
    p = progress_path(output)
    if not p.exists():
        return {}
    try:
        progress = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MaxlmError(f"{p}: unreadable progress file ({e.msg}); delete it to restart the counts") from None
    if not isinstance(progress, dict):
        raise MaxlmError(f"{p}: expected a JSON object; delete it to restart the counts")
    return progress


def write_progress(output: str | os.PathLike, progress: dict) -> None:
    """Writes the progress of `output` atomically."""
    write_json(progress_path(output), progress)
