"""The one rule that names a file's format: extensions, compression, the BOM, JSON values, BadRecord.

`.json` is read the same way everywhere (training's random-access readers, post-training
records, curation, select, synth): a file whose first non-blank character is `[` is a JSON
array of records; otherwise it holds one JSON value a line, as `.jsonl` does.
"""

from __future__ import annotations

import gzip
import io
import json

from maxlm.errors import MaxlmError

try:  # orjson parses several times faster; the stdlib names what is wrong when it fails
    import orjson

    _fast_loads = orjson.loads
except ImportError:  # pragma: no cover - exercised only without orjson
    _fast_loads = None

FORMATS = ("jsonl", "parquet", "arrayrecord", "text")
EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrayrecord": "arrayrecord", ".array_record": "arrayrecord",
    ".txt": "text", ".text": "text", ".md": "text",
}
COMPRESSIONS = (".gz", ".zst", ".zstd")
UTF8_BOM = b"\xef\xbb\xbf"  # some editors start a UTF-8 file with it; it is not text


class BadRecord(ValueError):
    """What is wrong with one record (`problem`) and, once a reader knows it, where (`where`, "file:line")."""

    def __init__(self, problem: str, where: str = ""):
        super().__init__(problem)
        self.problem = problem
        self.where = where

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadRecord) and (self.problem, self.where) == (other.problem, other.where)

    def __hash__(self) -> int:
        return hash((self.problem, self.where))

    def __reduce__(self):
        return type(self), (self.problem, self.where)


class StreamCut(BadRecord):
    """A file whose stream breaks off at `where` (a truncated .gz/.zst, a corrupt parquet): nothing after it can be read.

    Compressed streams cannot be resynchronised past the break and record no count of their
    lines, so how many records followed is unknowable.
    """


def json_value(raw: bytes) -> object:
    """Returns the JSON value of one jsonl line, or raises BadRecord."""
    if _fast_loads is not None:
        try:
            return _fast_loads(raw)
        except ValueError:
            pass  # the stdlib accepts a little more (NaN, huge ints) and words its errors better
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRecord(f"invalid UTF-8 at byte {e.start}: {e.reason}") from None
    except json.JSONDecodeError as e:
        hint = "; a JSON array file? expected one JSON object a line (jsonl)" if raw.strip() == b"[" else ""
        raise BadRecord(f"invalid JSON: {e.msg} (column {e.colno}){hint}") from None


def json_text(raw: bytes, text_key: str) -> str:
    """Returns the `text_key` string of one JSON-object record, or raises BadRecord."""
    return record_text(json_value(raw), text_key)


def record_text(record: object, text_key: str) -> str:
    """Returns the `text_key` string of one parsed record, or raises BadRecord."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if text_key not in record:
        keys = ", ".join(map(repr, list(record)[:8])) or "none"
        raise BadRecord(f"missing key {text_key!r} (keys: {keys})")
    text = record[text_key]
    if not isinstance(text, str):
        raise BadRecord(f"{text_key!r} must be a string, got {type(text).__name__}")
    return text


def compression_of(path: str) -> str:
    """Returns the compression suffix of `path` (one of COMPRESSIONS), or ""."""
    return next((c for c in COMPRESSIONS if str(path).lower().endswith(c)), "")


def detect_format(path: str, fmt: str = "auto", setting: str = "the source's format") -> tuple[str, str]:
    """Returns (format, compression suffix or "") of `path`; `fmt` other than auto wins. `setting` names where to set one."""
    path = str(path)
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


def may_be_json_array(path: str) -> bool:
    """Returns whether `path` is named .json (compressed or not): the one extension that may hold a JSON array."""
    name = str(path).lower()
    return name[: len(name) - len(compression_of(name))].endswith(".json")


def starts_json_array(head: bytes) -> bool:
    """Returns whether a file beginning with `head` is a JSON array: its first non-blank character, past a BOM, is `[`."""
    head = head[len(UTF8_BOM):] if head.startswith(UTF8_BOM) else head
    return head.lstrip(b" \t\r\n").startswith(b"[")


def open_binary(path: str) -> io.BufferedIOBase:
    """Returns a binary stream of `path`, decompressed when it ends in .gz or .zst/.zstd (every zstd frame)."""
    compression = compression_of(path)
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression:
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True, read_across_frames=True))
    return open(path, "rb")


def as_record(value: object) -> object:
    """Returns a record `iter_records` yielded; raises it when it is a BadRecord."""
    if isinstance(value, BadRecord):
        raise value
    return value
