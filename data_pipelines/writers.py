"""Output shards: jsonl.zst, parquet or ArrayRecord, each written to a temporary file and renamed when complete."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from data_pipelines.atomic import TMP_MARK, atomic_path

try:
    import orjson

    def _dumps(rec: Any) -> bytes:
        # OPT_SERIALIZE_NUMPY: stages may put numpy scalars into metadata
        return orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY, default=str)

except ImportError:  # pragma: no cover - exercised only without orjson

    def _dumps(rec: Any) -> bytes:
        return json.dumps(rec, ensure_ascii=False, default=str).encode("utf-8")


SUFFIX = {"jsonl.zst": ".jsonl.zst", "parquet": ".parquet", "arrayrecord": ".arrayrecord"}


class JsonlZstWriter:
    """Writes one JSON value a line into a zstd-compressed file, atomically on close."""

    def __init__(self, path: str | os.PathLike, level: int = 3):
        import zstandard

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f"{self.path.name}{TMP_MARK}{os.getpid()}")
        self._raw = open(self._tmp, "wb")
        self._z = zstandard.ZstdCompressor(level=level).stream_writer(self._raw, closefd=False)
        self.count = 0

    def write(self, rec: Any) -> None:
        """Appends one record."""
        self._z.write(_dumps(rec) + b"\n")
        self.count += 1

    def close(self, ok: bool = True) -> None:
        """Finishes the file; with ok=False the partial file is discarded."""
        self._z.close()
        self._raw.close()
        if ok:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

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
                    cols[k] = pa.array([None if v is None else _dumps(v).decode() for v in values])
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f"{self.path.name}{TMP_MARK}{os.getpid()}")
        # group_size:1 compresses each record alone: training reads them in shuffled order,
        # and a larger group would inflate the whole group to read one record
        self._w = _Writer(str(self._tmp), "group_size:1")
        self.count = 0

    def write(self, rec: Any) -> None:
        """Appends one record."""
        self._w.write(_dumps(rec))
        self.count += 1

    def close(self, ok: bool = True) -> None:
        """Finishes the file; with ok=False the partial file is discarded."""
        self._w.close()
        if ok:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

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


def read_jsonl_zst(path: str | os.PathLike) -> Iterator[Any]:
    """Yields the JSON values of a .jsonl.zst file written by JsonlZstWriter."""
    from data_pipelines.readers import _loads
    from maxlm.data.formats import open_binary

    with open_binary(str(path)) as fh:
        for raw in fh:
            yield _loads(raw)
