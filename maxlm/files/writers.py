"""Writers of data files: output shards (jsonl.zst, parquet, ArrayRecord), whole jsonl files,
and durable appends to a jsonl file that a crashed run resumes.

Shards and whole files appear atomically (`atomic`): written under a temporary name, renamed
when complete. An append is one write, then flush and fsync, so a crash loses at most the
batch in flight; `cut_torn_tail` removes the torn last line such a crash leaves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from maxlm.files.atomic import atomic_path, finish_temp, temp_beside

try:
    import orjson

    def dumps(rec: Any) -> bytes:
        """Returns one record as compact JSON bytes (numpy scalars and unknown types allowed)."""
        # OPT_SERIALIZE_NUMPY: stages may put numpy scalars into metadata
        return orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY, default=str)

except ImportError:  # pragma: no cover - exercised only without orjson

    def dumps(rec: Any) -> bytes:
        """Returns one record as compact JSON bytes (unknown types as str)."""
        return json.dumps(rec, ensure_ascii=False, default=str).encode("utf-8")


SUFFIX = {"jsonl.zst": ".jsonl.zst", "parquet": ".parquet", "arrayrecord": ".arrayrecord"}


def _finish(flush, release, tmp: Path, path: Path, ok: bool) -> None:
    """Flushes a streaming writer and moves its temp file onto `path`; on any failure the temp file goes.

    When not ok (an error is already on its way up), a second failure while flushing (the same
    full disk) is dropped so that it neither hides the first nor leaves the temp file behind.
    """
    flushed = False
    try:
        flush()
        flushed = True
    except OSError:
        release()
        if ok:
            raise
    finally:
        finish_temp(tmp, path, ok and flushed)


class JsonlZstWriter:
    """Writes one JSON value a line into a zstd-compressed file, atomically on close."""

    def __init__(self, path: str | os.PathLike, level: int = 3):
        import zstandard

        self.path = Path(path)
        self._tmp = temp_beside(self.path)
        self._raw = open(self._tmp, "wb")
        self._z = zstandard.ZstdCompressor(level=level).stream_writer(self._raw, closefd=False)
        self.count = 0

    def write(self, rec: Any) -> None:
        """Appends one record."""
        self._z.write(dumps(rec) + b"\n")
        self.count += 1

    def close(self, ok: bool = True) -> None:
        """Finishes the file; with ok=False, or when finishing fails (a full disk), the partial file is discarded."""
        _finish(lambda: (self._z.close(), self._raw.close()), self._raw.close, self._tmp, self.path, ok)

    def __enter__(self) -> "JsonlZstWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


class ParquetWriter:
    """Collects records and writes one parquet file on close (schema = union of all keys)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.count = 0

    def write(self, rec: dict) -> None:
        """Appends one record."""
        self.rows.append(rec)
        self.count += 1

    def close(self, ok: bool = True) -> None:
        """Writes the file when ok; otherwise drops the rows."""
        if ok:
            import pyarrow as pa
            import pyarrow.parquet as pq

            keys: dict[str, None] = {}
            for r in self.rows:
                keys.update(dict.fromkeys(r))
            cols = {}
            for k in keys:
                values = [r.get(k) for r in self.rows]
                try:
                    cols[k] = pa.array(values)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                    # mixed types in one field (int here, str there): keep each value as JSON text
                    cols[k] = pa.array([None if v is None else dumps(v).decode() for v in values])
            with atomic_path(self.path) as tmp:
                pq.write_table(pa.table(cols), tmp)
        self.rows = []

    def __enter__(self) -> "ParquetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


class ArrayRecordWriter:
    """Writes one JSON object a record into an ArrayRecord file (what maxlm.data reads), atomically on close."""

    def __init__(self, path: str | os.PathLike):
        from array_record.python.array_record_module import ArrayRecordWriter as _Writer

        self.path = Path(path)
        self._tmp = temp_beside(self.path)
        # group_size:1 compresses each record alone: training reads them in shuffled order,
        # and a larger group would inflate the whole group to read one record
        self._w = _Writer(str(self._tmp), "group_size:1")
        self.count = 0

    def write(self, rec: Any) -> None:
        """Appends one record."""
        self._w.write(dumps(rec))
        self.count += 1

    def close(self, ok: bool = True) -> None:
        """Finishes the file; with ok=False, or when finishing fails (a full disk), the partial file is discarded."""
        _finish(self._w.close, lambda: None, self._tmp, self.path, ok)

    def __enter__(self) -> "ArrayRecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def open_writer(path: str | os.PathLike, fmt: str, level: int = 3) -> JsonlZstWriter | ParquetWriter | ArrayRecordWriter:
    """Returns a writer for an output shard in format `fmt` (jsonl.zst | parquet | arrayrecord)."""
    if fmt == "parquet":
        return ParquetWriter(path)
    if fmt == "arrayrecord":
        return ArrayRecordWriter(path)
    return JsonlZstWriter(path, level)


def jsonl_line(rec: Any) -> str:
    """Returns one record as a jsonl line (the stdlib's spacing, non-ASCII kept), newline included."""
    return json.dumps(rec, ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, records) -> None:
    """Writes one JSON object a line to `path`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(jsonl_line(rec))


def append_jsonl(path: str | os.PathLike, records: list) -> None:
    """Appends `records` to a jsonl file durably: one write, flush, fsync."""
    if not records:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(jsonl_line(r) for r in records))
        f.flush()
        os.fsync(f.fileno())


def cut_torn_tail(path: str | os.PathLike) -> int:
    """Cuts a jsonl file after its last complete line; returns how many bytes of a torn last line it removed.

    Only the last write of `append_jsonl` can be torn, and it is the batch that never finished.
    """
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    with open(path, "r+b") as f:
        end = _last_newline_end(f, size)
        if end < size:
            f.truncate(end)
    return size - end


def _last_newline_end(f, size: int) -> int:
    """Returns the offset just past the last newline of an open file of `size` bytes (0 when none)."""
    pos = size
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        chunk = f.read(step)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return pos - step + at + 1
        pos -= step
    return 0
