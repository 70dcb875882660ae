"""Input files to Documents: jsonl (plain, .gz, .zst; a .json array), parquet, plain text
(documents separated by blank lines) and WARC (the main text of each HTML page, see warc.py). Files are read by `maxlm.files.readers.iter_records` and
formats told from the extension by `maxlm.files.formats.detect_format`, so curation reads the
files training reads, by the same rules.

Bad records (invalid JSON, missing text, undecodable bytes, a truncated stream) come out as
BadRecord with file:line and never stop the file: every good record around them is kept.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterator

from data_pipelines.curate.config import InputConfig
from data_pipelines.curate.document import Document
from data_pipelines.curate.warc import is_warc, read_warc
from maxlm.errors import MaxlmError
from maxlm.files import formats
from maxlm.files.formats import BadRecord
from maxlm.files.readers import iter_records

@dataclass(frozen=True)
class InputFile:
    """One input shard: its path and the short name used in ids and reports."""

    path: str
    label: str  # path relative to the glob's fixed prefix: ids read "label:line"


def list_inputs(pattern: str) -> list[InputFile]:
    """Returns the files matching `pattern` (`**` recursive), sorted; raises if there are none."""
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not paths:
        raise MaxlmError(f"--input {pattern}: no files match")
    fixed = pattern.split("*")[0].split("?")[0].split("[")[0]
    root = fixed if fixed.endswith(os.sep) else os.path.dirname(fixed)
    if len(paths) == 1 and not any(c in pattern for c in "*?["):
        root = os.path.dirname(paths[0])
    return [InputFile(p, os.path.relpath(p, root or ".")) for p in paths]


def detect_format(path: str, configured: str) -> str:
    """Returns jsonl | parquet | text | warc for `path`, from the config or the extension (the rule `maxlm train` uses)."""
    if configured == "warc" or (configured == "auto" and is_warc(path)):
        return "warc"
    fmt, _ = formats.detect_format(path, configured, setting="input.format")
    if fmt not in ("jsonl", "parquet", "text"):
        raise MaxlmError(f"{path}: curation reads jsonl, parquet, text or warc, not {fmt}; set input.format")
    return fmt


def read_documents(f: InputFile, cfg: InputConfig) -> Iterator[Document | BadRecord]:
    """Yields the Documents of one input file, and a BadRecord for each record that is not one."""
    fmt = detect_format(f.path, cfg.format)
    records = read_warc(f.path, f.label, cfg.warc_timeout_s) if fmt == "warc" else iter_records(f.path, fmt, name=f.label)
    for line, rec in records:
        if isinstance(rec, BadRecord):
            yield rec
        elif fmt == "warc":  # the record's own id, whatever input.text_key / id_key say
            yield Document(rec.pop("id") or f"{f.label}:{line}", rec.pop("text"), rec, "text", f"{f.label}:{line}")
        elif fmt == "text":  # the same documents `maxlm train` reads
            where = f"{f.label}:{line}"
            yield Document(where, rec, {}, cfg.text_key[0], where)
        else:
            yield to_document(rec, f, line, cfg)


def first_user_turn(messages: list) -> int | None:
    """Returns the index of the first {"role": "user", "content": str} message of a messages list, or None."""
    return next((i for i, m in enumerate(messages)
                 if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)), None)


def to_document(rec, f: InputFile, line: int, cfg: InputConfig) -> Document | BadRecord:
    """Returns the Document of one parsed record, or a BadRecord saying what is missing."""
    where = f"{f.label}:{line}"
    if not isinstance(rec, dict):
        return BadRecord(f"expected a JSON object, got {type(rec).__name__}", where)
    for key in cfg.text_key:
        text = rec.get(key)
        if text is None:
            continue
        turn = first_user_turn(text) if isinstance(text, list) else None
        if turn is not None:
            text = text[turn]["content"]
        elif not isinstance(text, str):
            return BadRecord(f"{key!r} must be a string or a list of messages with a user turn, got {type(text).__name__}", where)
        meta = dict(rec)
        if turn is None:  # a messages list stays whole in meta; its user turn's text is written back into it
            del meta[key]
        doc_id = meta.pop(cfg.id_key, None)
        if doc_id is None:
            doc_id = where  # stable across runs: same file, same line
        return Document(doc_id, text, meta, key, where, turn)
    return BadRecord(f"missing text: none of {cfg.text_key} present (keys: {sorted(rec)[:8]})", where)
