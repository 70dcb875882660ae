"""Readers of data files: random-access readers of document texts for training, and the one
streaming reader, `iter_records`, that curation, post-training records, select and synth use.

Random-access readers validate every record when they are built, so bad data fails (or is
counted and dropped) before any model compiles; afterwards `reader[i]` only seeks and decodes.
Bad records are named `file:line` (1-based; the row number for parquet and ArrayRecord; a
text document's first line; the line an element starts on in a JSON array).

Compressed jsonl/text (.gz, .zst) is decompressed once into the on-disk cache
(`cache.cache_dir("decompressed")`) and memory-mapped from there: random access into a
compressed stream would mean re-inflating it on every read, and a cache shared by every
worker process costs no extra memory. Parquet's text column is decoded into memory, once
per process; ArrayRecord is read record by record, so it suits corpora larger than memory;
a JSON array is parsed whole (such files are small), so its texts are held in memory.
"""

from __future__ import annotations

import array
import json
import logging
import mmap
import os
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from maxlm.errors import BadRecordError, MaxlmError
from maxlm.files.cache import decompressed
from maxlm.files.formats import (
    UTF8_BOM, BadRecord, StreamCut, detect_format, json_text, json_value, may_be_json_array, open_binary, record_text, starts_json_array,
)

log = logging.getLogger(__name__)


class Reader:
    """Shared bookkeeping of every reader: the name in messages, the bad-record policy and its count."""

    def __init__(self, name: str, on_bad_record: str):
        if on_bad_record not in ("error", "skip"):
            raise MaxlmError(f"data.on_bad_record must be error or skip, got {on_bad_record!r}")
        self.name = name
        self.on_bad_record = on_bad_record
        self.skipped = 0  # records dropped under on_bad_record=skip

    def _bad(self, where: int, reason: str) -> None:
        message = f"{self.name}:{where}: {reason}"
        if self.on_bad_record == "error":
            raise BadRecordError(message)
        if self.skipped == 0:
            log.warning("skipping bad records, first: %s", message)
        self.skipped += 1

    def __getstate__(self) -> dict:
        # Open handles (mmap, arrow, array_record) stay behind; worker processes reopen lazily.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_open")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _LineIndexed(Reader):
    """A file whose documents are byte spans; read through a lazily opened mmap."""

    def __init__(self, path: str, name: str, on_bad_record: str):
        super().__init__(name, on_bad_record)
        self.path = path
        self.spans_2xN = np.zeros((2, 0), np.int64)

    def __len__(self) -> int:
        return self.spans_2xN.shape[1]

    def _bytes(self, i: int) -> bytes:
        mm = self.__dict__.get("_open_mmap")
        if mm is None:
            with open(self.path, "rb") as f:
                mm = self._open_mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        start, end = self.spans_2xN[:, i]
        return mm[start:end]


class JsonlFile(_LineIndexed):
    """Texts of a jsonl file: one JSON object a line; blank lines are ignored."""

    def __init__(self, path: str, text_key: str = "text", on_bad_record: str = "error", name: str | None = None):
        super().__init__(path, name or path, on_bad_record)
        self.text_key = text_key
        starts, ends = array.array("q"), array.array("q")
        offset = 0
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                start, offset = offset, offset + len(line)
                if lineno == 1 and line.startswith(UTF8_BOM):
                    start, line = start + len(UTF8_BOM), line[len(UTF8_BOM):]
                if not line.strip():
                    continue
                try:
                    json_text(line, text_key)
                except BadRecord as e:
                    self._bad(lineno, str(e))
                    continue
                starts.append(start)
                ends.append(offset)
        self.spans_2xN = np.array([starts, ends], np.int64).reshape(2, -1)

    def __getitem__(self, i: int) -> str:
        return json.loads(self._bytes(i))[self.text_key]


class JsonArrayFile(Reader):
    """Texts of a .json file holding one JSON array of objects."""

    def __init__(self, path: str, text_key: str = "text", on_bad_record: str = "error", name: str | None = None):
        super().__init__(name or path, on_bad_record)
        self.text_key = text_key
        self.texts: list[str] = []
        for line, value in json_array(path, self.name):
            try:
                self.texts.append(record_text(value, text_key))
            except BadRecord as e:
                self._bad(line, str(e))

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


class TextFile(_LineIndexed):
    """Texts of a plain UTF-8 file, split into documents by `text_documents`."""

    def __init__(self, path: str, on_bad_record: str = "error", name: str | None = None):
        super().__init__(path, name or path, on_bad_record)
        starts, ends = array.array("q"), array.array("q")
        with open(path, "rb") as f:
            for doc in text_documents(f):
                try:
                    doc.decode()
                except BadRecord as e:
                    self._bad(doc.line, str(e))
                    continue
                starts.append(doc.start)
                ends.append(doc.end)
        self.spans_2xN = np.array([starts, ends], np.int64).reshape(2, -1)

    def __getitem__(self, i: int) -> str:
        return self._bytes(i).decode("utf-8")


class TextDocument(NamedTuple):
    """One document of a plain-text file, as bytes and where it starts."""

    line: int  # 1-based line of its first line: the file:line that names it
    start: int  # byte offset of its first byte in the file
    raw: bytes  # its lines as written, without the final line break

    @property
    def end(self) -> int:
        """Returns the byte offset just past its last byte."""
        return self.start + len(self.raw)

    def decode(self) -> str:
        """Returns the text; raises BadRecord naming the line of the first byte that is not UTF-8."""
        try:
            return self.raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = self.line + self.raw.count(b"\n", 0, e.start)
            raise BadRecord(f"invalid UTF-8 on line {line}: {e.reason}") from None


def text_documents(lines: Iterable[bytes]) -> Iterator[TextDocument]:
    """Yields the documents of a plain-text file, given its lines as bytes (a file opened "rb").

    The one rule for .txt everywhere (training sources and curation input): each run of
    non-blank lines is a document; lines holding only whitespace separate documents and
    belong to none. Lines inside a document are kept verbatim (line breaks included); a UTF-8
    byte order mark at the start of the file is dropped.
    """
    offset, first, start, parts = 0, 0, 0, []
    for lineno, ln in enumerate(lines, 1):
        begin, offset = offset, offset + len(ln)
        if lineno == 1 and ln.startswith(UTF8_BOM):
            begin, ln = begin + len(UTF8_BOM), ln[len(UTF8_BOM):]
        if ln.strip():
            if not parts:
                first, start = lineno, begin
            parts.append(ln)
        elif parts:
            yield TextDocument(first, start, b"".join(parts).rstrip(b"\r\n"))
            parts = []
    if parts:
        yield TextDocument(first, start, b"".join(parts).rstrip(b"\r\n"))


class ParquetFile(Reader):
    """Texts of one string column of a parquet file (memory-mapped, read lazily per process)."""

    def __init__(self, path: str, text_key: str = "text", on_bad_record: str = "error"):
        super().__init__(path, on_bad_record)
        self.path, self.text_key = path, text_key
        column = self._column()
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(~valid):
            self._bad(int(row) + 1, f"{text_key!r} is null, expected a string")
        if column.type in _binary_types():
            for row in np.flatnonzero(valid):
                try:
                    column[int(row)].as_py().decode("utf-8")
                except UnicodeDecodeError as e:
                    valid[row] = False
                    self._bad(int(row) + 1, f"invalid UTF-8 at byte {e.start}: {e.reason}")
        self.rows = np.flatnonzero(valid).astype(np.int64)

    def _column(self):
        column = self.__dict__.get("_open_column")
        if column is None:
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(self.path, columns=[self.text_key], memory_map=True)
            except Exception as e:  # pyarrow raises several types for a missing column or a bad file
                names = _parquet_columns(self.path)
                if names is not None and self.text_key not in names:
                    raise MaxlmError(f"{self.name}: no column {self.text_key!r} (columns: {', '.join(names)}); set text_key") from None
                raise MaxlmError(f"{self.name}: cannot read parquet: {e}") from None
            column = table.column(0).combine_chunks()
            if column.type not in _binary_types() + _string_types():
                raise MaxlmError(f"{self.name}: column {self.text_key!r} has type {column.type}, expected string")
            self._open_column = column
        return column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> str:
        value = self._column()[int(self.rows[i])].as_py()
        return value.decode("utf-8") if isinstance(value, bytes) else value


def _string_types() -> tuple:
    import pyarrow as pa

    return (pa.string(), pa.large_string(), pa.string_view())


def _binary_types() -> tuple:
    import pyarrow as pa

    return (pa.binary(), pa.large_binary(), pa.binary_view())


def _parquet_columns(path: str) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except Exception:
        return None


class ArrayRecordFile(Reader):
    """Texts of an ArrayRecord file whose records are UTF-8 JSON objects, as in jsonl."""

    def __init__(self, path: str, text_key: str = "text", on_bad_record: str = "error"):
        super().__init__(path, on_bad_record)
        self.path, self.text_key = path, text_key
        reader = _array_record_reader(path, "readahead_buffer_size:16777216")  # sequential scan
        valid = array.array("q")
        try:
            total = reader.num_records()
            for start in range(0, total, 4096):  # in chunks: a shard may not fit in memory
                for row, raw in enumerate(reader.read(start, min(start + 4096, total)), start):
                    try:
                        json_text(raw, text_key)
                        valid.append(row)
                    except BadRecord as e:
                        self._bad(row + 1, str(e))
        finally:
            reader.close()
        self.rows = np.array(valid, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> str:
        reader = self.__dict__.get("_open_reader")
        if reader is None:
            # No readahead: after shuffling, reads land anywhere in the file.
            reader = self._open_reader = _array_record_reader(self.path, "readahead_buffer_size:0")
        (raw,) = reader.read([int(self.rows[i])])
        return json.loads(raw)[self.text_key]


def _array_record_reader(path: str, options: str):
    try:
        from array_record.python.array_record_module import ArrayRecordReader
    except ImportError:
        raise MaxlmError(f"{path}: reading ArrayRecord needs the array_record package: pip install array_record") from None
    try:
        return ArrayRecordReader(path, options)
    except Exception as e:
        raise MaxlmError(f"{path}: cannot open ArrayRecord file: {e}") from None


def open_file(path: str, fmt: str = "auto", text_key: str = "text", on_bad_record: str = "error"):
    """Returns the validated random-access reader of one file's texts."""
    if not os.path.isfile(path):
        raise MaxlmError(f"{path}: file not found")
    found, compression = detect_format(path, fmt)
    local = decompressed(path, compression) if compression else path
    if found == "jsonl" and is_json_array(path):
        return JsonArrayFile(path, text_key, on_bad_record)
    if found == "jsonl":
        return JsonlFile(local, text_key, on_bad_record, name=path)
    if found == "text":
        return TextFile(local, on_bad_record, name=path)
    if found == "parquet":
        return ParquetFile(path, text_key, on_bad_record)
    return ArrayRecordFile(path, text_key, on_bad_record)


# ---------------------------------------------------------------- streaming


def is_json_array(path: str) -> bool:
    """Returns whether `path` is a .json file (compressed or not) holding a JSON array: the one rule for .json."""
    if not may_be_json_array(path):
        return False
    try:
        with open_binary(path) as f:
            return starts_json_array(f.read(4096))
    except (OSError, EOFError, ValueError):
        return False  # an unreadable stream is reported by the line reader, with its line


_SPACE = re.compile(r"[ \t\r\n]*")


def json_array(path: str, name: str | None = None) -> Iterator[tuple[int, object]]:
    """Yields (line each element starts on, element) of a JSON array file; a broken array raises MaxlmError.

    One broken element breaks the array: nothing after it can be found, so it is never skipped.
    """
    name = name or path
    with open_binary(path) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MaxlmError(f"{name}: invalid UTF-8 at byte {e.start}: {e.reason}") from None
    pos = _SPACE.match(text).end() + 1  # past the "["
    decoder, line, counted = json.JSONDecoder(), 1, 0
    pos = _SPACE.match(text, pos).end()
    while not text.startswith("]", pos):
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise MaxlmError(f"{name}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        yield line, value
        pos = _SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _SPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            at = text.count("\n", 0, pos) + 1
            raise MaxlmError(f"{name}:{at}: invalid JSON array: expected ',' or ']' after an element")


def iter_records(path: str, fmt: str = "auto", name: str | None = None, strict: bool = False,
                 setting: str = "the source's format") -> Iterator[tuple[int, object]]:
    """Yields (line, record) of one file, in order, reading it once as a stream.

    A record is a parsed JSON value (jsonl, a .json array, ArrayRecord), a row dict (parquet) or
    a document's text (text). A record that cannot be read is yielded as a `BadRecord` whose
    `where` is `name:line` (name defaults to the path), and reading goes on; a stream that
    breaks off (a truncated .gz/.zst, a corrupt parquet) ends with one `StreamCut`. With
    `strict`, the first bad record raises MaxlmError instead: for files this project wrote.
    """
    name = name or str(path)
    found, _ = detect_format(str(path), fmt, setting)
    if found == "jsonl" and is_json_array(path):
        items = json_array(str(path), name)
    else:
        items = _READ[found](str(path), name)
    for line, value in items:
        if strict and isinstance(value, BadRecord):
            raise MaxlmError(f"{value.where}: {value.problem}")
        yield line, value


def _broken_stream(e: BaseException) -> bool:
    """Returns whether `e` is how a decompressor or file says the rest of a stream is unreadable."""
    return isinstance(e, (OSError, EOFError, ValueError)) or type(e).__module__.startswith("zstandard")


def _jsonl(path: str, name: str) -> Iterator[tuple[int, object]]:
    line = 0
    try:
        with open_binary(path) as fh:
            for line, raw in enumerate(fh, 1):
                if line == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                if not raw.strip():
                    continue
                try:
                    yield line, json_value(raw)
                except BadRecord as e:
                    yield line, BadRecord(e.problem, f"{name}:{line}")
    except Exception as e:
        if not _broken_stream(e):
            raise
        # zstd/gzip raise these on a truncated or corrupt stream; the lines before it stand
        yield line + 1, StreamCut(f"unreadable from here on: {type(e).__name__}: {e}", f"{name}:{line + 1}")


def _text(path: str, name: str) -> Iterator[tuple[int, object]]:
    line = 1  # where the unread rest of the file starts
    try:
        with open_binary(path) as fh:
            for doc in text_documents(fh):
                line = doc.line + doc.raw.count(b"\n") + 1
                try:
                    yield doc.line, doc.decode()
                except BadRecord as e:  # one bad byte costs only its own document
                    yield doc.line, BadRecord(e.problem, f"{name}:{doc.line}")
    except Exception as e:
        if not _broken_stream(e):
            raise
        yield line, StreamCut(f"unreadable from here on: {type(e).__name__}: {e}", f"{name}:{line}")


def _parquet(path: str, name: str) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                row += 1
                yield row, rec
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for corrupt files
        yield row + 1, StreamCut(f"unreadable parquet from here on: {type(e).__name__}: {e}", f"{name}:{row + 1}")


def _arrayrecord(path: str, name: str) -> Iterator[tuple[int, object]]:
    reader = _array_record_reader(path, "readahead_buffer_size:16777216")
    try:
        total = reader.num_records()
        for start in range(0, total, 4096):
            for row, raw in enumerate(reader.read(start, min(start + 4096, total)), start + 1):
                try:
                    yield row, json_value(raw)
                except BadRecord as e:
                    yield row, BadRecord(e.problem, f"{name}:{row}")
    finally:
        reader.close()


_READ = {"jsonl": _jsonl, "text": _text, "parquet": _parquet, "arrayrecord": _arrayrecord}
