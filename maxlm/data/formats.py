"""One reader per file format, each a random-access list of document texts.

Every record is validated when the reader is built, so bad data fails (or is counted and
dropped) before any model compiles; afterwards `reader[i]` only seeks and decodes.
Bad records are named `file:line` (1-based; the row number for parquet and ArrayRecord; a
text document's first line).

Compressed jsonl/text (.gz, .zst) is decompressed once into the on-disk cache
(`cache.cache_dir("decompressed")`) and memory-mapped from there: random access into a
compressed stream would mean re-inflating it on every read, and a cache shared by every
worker process costs no extra memory. Parquet's text column is decoded into memory, once
per process; ArrayRecord is read record by record, so it suits corpora larger than memory.
"""

from __future__ import annotations

import array
import gzip
import hashlib
import io
import json
import logging
import mmap
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from maxlm.data.cache import cache_dir, write_atomic
from maxlm.errors import BadRecordError, MaxlmError

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "parquet", "arrayrecord", "text")
EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrayrecord": "arrayrecord", ".array_record": "arrayrecord",
    ".txt": "text", ".text": "text", ".md": "text",
}
COMPRESSIONS = (".gz", ".zst", ".zstd")
UTF8_BOM = b"\xef\xbb\xbf"  # some editors start a UTF-8 file with it; it is not text


class BadRecord(ValueError):
    """What is wrong with one record; the reader adds file:line."""


def json_value(raw: bytes) -> object:
    """Returns the JSON value of one jsonl line, or raises BadRecord."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRecord(f"invalid UTF-8 at byte {e.start}: {e.reason}") from None
    except json.JSONDecodeError as e:
        hint = "; a JSON array file? expected one JSON object a line (jsonl)" if raw.strip() == b"[" else ""
        raise BadRecord(f"invalid JSON: {e.msg} (column {e.colno}){hint}") from None


def json_text(raw: bytes, text_key: str) -> str:
    """Returns the `text_key` string of one JSON-object record, or raises BadRecord."""
    record = json_value(raw)
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if text_key not in record:
        keys = ", ".join(map(repr, list(record)[:8])) or "none"
        raise BadRecord(f"missing key {text_key!r} (keys: {keys})")
    text = record[text_key]
    if not isinstance(text, str):
        raise BadRecord(f"{text_key!r} must be a string, got {type(text).__name__}")
    return text


class _Reader:
    """Shared bookkeeping: the name in messages, the bad-record policy and its count."""

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


class _LineIndexed(_Reader):
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


class ParquetFile(_Reader):
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


class ArrayRecordFile(_Reader):
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


def compression_of(path: str) -> str:
    """Returns the compression suffix of `path` (one of COMPRESSIONS), or ""."""
    return next((c for c in COMPRESSIONS if path.lower().endswith(c)), "")


def detect_format(path: str, fmt: str = "auto", setting: str = "the source's format") -> tuple[str, str]:
    """Returns (format, compression suffix or "") of `path`; `fmt` other than auto wins. `setting` names where to set one."""
    name = path.lower()
    compression = compression_of(path)
    stem = name[: len(name) - len(compression)]
    if fmt != "auto":
        if fmt not in FORMATS:
            raise MaxlmError(f"{path}: format must be auto or one of {', '.join(FORMATS)}; got {fmt!r}")
        found = fmt
    else:
        found = next((f for ext, f in EXTENSIONS.items() if stem.endswith(ext)), "")
        if not found:
            known = ", ".join(list(EXTENSIONS) + [f".jsonl{c}" for c in COMPRESSIONS])
            raise MaxlmError(f"{path}: unknown file type; expected one of {known}, or set {setting}")
    if compression and found not in ("jsonl", "text"):
        raise MaxlmError(f"{path}: {compression} compression is supported for jsonl and text, not {found}")
    return found, compression


def open_binary(path: str) -> io.BufferedIOBase:
    """Returns a binary stream of `path`, decompressed when it ends in .gz or .zst/.zstd (every zstd frame)."""
    compression = compression_of(path)
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression:
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True, read_across_frames=True))
    return open(path, "rb")


def decompressed(path: str, compression: str) -> str:
    """Returns the path of the cached decompressed copy of `path`, creating it on first use."""
    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir("decompressed") / f"{key}-{Path(path).name[: -len(compression)]}"
    if out.exists():
        return str(out)

    def write(f):
        with open_binary(path) as src:
            shutil.copyfileobj(src, f, 1 << 22)

    try:
        write_atomic(out, write)
    except (OSError, EOFError, ValueError) as e:
        raise MaxlmError(f"{path}: cannot decompress {compression} file: {e}") from None
    except Exception as e:  # zstandard.ZstdError
        if type(e).__module__.startswith("zstandard"):
            raise MaxlmError(f"{path}: cannot decompress {compression} file: {e}") from None
        raise
    return str(out)


def open_file(path: str, fmt: str = "auto", text_key: str = "text", on_bad_record: str = "error"):
    """Returns the validated random-access reader of one file's texts."""
    if not os.path.isfile(path):
        raise MaxlmError(f"{path}: file not found")
    found, compression = detect_format(path, fmt)
    local = decompressed(path, compression) if compression else path
    if found == "jsonl":
        return JsonlFile(local, text_key, on_bad_record, name=path)
    if found == "text":
        return TextFile(local, on_bad_record, name=path)
    if found == "parquet":
        return ParquetFile(path, text_key, on_bad_record)
    return ArrayRecordFile(path, text_key, on_bad_record)
