"""Input files to Documents: jsonl (plain, .gz, .zst), parquet and plain text (documents
separated by blank lines, by the same rule as `maxlm train`: `maxlm.data.formats.text_documents`).
Formats are told from the extension by `maxlm.data.formats.detect_format`, so curation reads the
files training reads.

Bad records (invalid JSON, missing text, undecodable bytes, a truncated stream) come out as
BadRecord with file:line and never stop the file: every good record around them is kept.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Iterator

from data_pipelines.config import InputConfig
from data_pipelines.document import BadRecord, Document
from maxlm.data import formats
from maxlm.errors import MaxlmError

try:  # orjson parses several times faster; the stdlib is the fallback
    import orjson

    _loads = orjson.loads
    _JSONError = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised only without orjson
    orjson = None
    _loads = json.loads
    _JSONError = ValueError

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
    """Returns jsonl | parquet | text for `path`, from the config or the extension (the rule `maxlm train` uses)."""
    fmt, _ = formats.detect_format(path, configured, setting="input.format")
    if fmt not in ("jsonl", "parquet", "text"):
        raise MaxlmError(f"{path}: curation reads jsonl, parquet or text, not {fmt}; set input.format")
    return fmt


def read_documents(f: InputFile, cfg: InputConfig) -> Iterator[Document | BadRecord]:
    """Yields the Documents of one input file, and a BadRecord for each record that is not one."""
    fmt = detect_format(f.path, cfg.format)
    if fmt == "jsonl":
        yield from _read_jsonl(f, cfg)
    elif fmt == "parquet":
        yield from _read_parquet(f, cfg)
    else:
        yield from _read_text(f, cfg)


def to_document(rec, f: InputFile, line: int, cfg: InputConfig) -> Document | BadRecord:
    """Returns the Document of one parsed record, or a BadRecord saying what is missing."""
    where = f"{f.label}:{line}"
    if not isinstance(rec, dict):
        return BadRecord(where, f"expected a JSON object, got {type(rec).__name__}")
    for key in cfg.text_key:
        text = rec.get(key)
        if text is None:
            continue
        if not isinstance(text, str):
            return BadRecord(where, f"{key!r} must be a string, got {type(text).__name__}")
        meta = dict(rec)
        del meta[key]
        doc_id = meta.pop(cfg.id_key, None)
        if doc_id is None:
            doc_id = where  # stable across runs: same file, same line
        return Document(doc_id, text, meta, key, where)
    return BadRecord(where, f"missing text: none of {cfg.text_key} present (keys: {sorted(rec)[:8]})")


def _json_problem(raw: bytes, err: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"undecodable bytes: invalid UTF-8 at byte {e.start}"
    return f"invalid JSON: {err}"


def _read_jsonl(f: InputFile, cfg: InputConfig) -> Iterator[Document | BadRecord]:
    line = 0
    try:
        with formats.open_binary(f.path) as fh:
            for line, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    rec = _loads(raw)
                except (_JSONError, ValueError, UnicodeDecodeError) as e:
                    yield BadRecord(f"{f.label}:{line}", _json_problem(raw, e))
                    continue
                yield to_document(rec, f, line, cfg)
    except (OSError, EOFError, ValueError) as e:
        # zstd/gzip raise these on a truncated or corrupt stream; the lines before it stand
        yield BadRecord(f"{f.label}:{line + 1}", f"unreadable from here on: {type(e).__name__}: {e}")


def _read_parquet(f: InputFile, cfg: InputConfig) -> Iterator[Document | BadRecord]:
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(f.path)
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                row += 1
                yield to_document(rec, f, row, cfg)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        yield BadRecord(f"{f.label}:{row + 1}", f"unreadable parquet from here on: {type(e).__name__}: {e}")


def _read_text(f: InputFile, cfg: InputConfig) -> Iterator[Document | BadRecord]:
    line = 1  # where the unread rest of the file starts
    try:
        with formats.open_binary(f.path) as fh:
            for doc in formats.text_documents(fh):  # the same documents `maxlm train` reads
                line = doc.line + doc.raw.count(b"\n") + 1
                where = f"{f.label}:{doc.line}"
                try:
                    text = doc.decode()
                except formats.BadRecord as e:
                    yield BadRecord(where, str(e))  # one bad byte costs only its own document
                    continue
                yield Document(where, text, {}, cfg.text_key[0], where)
    except (OSError, EOFError, ValueError) as e:
        # zstd/gzip raise these on a truncated or corrupt stream; the documents before it stand
        yield BadRecord(f"{f.label}:{line}", f"unreadable from here on: {type(e).__name__}: {e}")
