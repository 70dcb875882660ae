"""Readers: every format, compression, globs, and bad records named file:line."""

from __future__ import annotations

import gzip
import io
import json
import pickle

import pytest

from maxlm.files.readers import open_file, text_documents
from maxlm.errors import MaxlmError

TEXTS = ["first document", "second one,\nwith two lines", "third: ünïcödé ✓"]


def _lines(texts) -> bytes:
    return "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()


def _write(tmp_path, name: str) -> str:
    """Returns the path of a file holding TEXTS in the format its name says."""
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_bytes(_lines(TEXTS))
    elif name.endswith(".jsonl.gz"):
        path.write_bytes(gzip.compress(_lines(TEXTS)))
    elif name.endswith(".jsonl.zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(_lines(TEXTS)))
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": TEXTS, "id": list(range(len(TEXTS)))}), path, row_group_size=2)
    elif name.endswith(".arrayrecord"):
        from array_record.python.array_record_module import ArrayRecordWriter

        writer = ArrayRecordWriter(str(path), "group_size:1")
        for line in _lines(TEXTS).splitlines():
            writer.write(line)
        writer.close()
    elif name.endswith(".txt"):
        # Documents are blocks between blank lines; runs of blank lines and edges are ignored.
        path.write_text("\n\n" + "\n\n\n".join(TEXTS) + "\n  \n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.parquet", "a.arrayrecord", "a.txt"])
def test_every_format_reads_the_same_texts(tmp_path, name):
    reader = open_file(_write(tmp_path, name))
    assert len(reader) == len(TEXTS)
    assert [reader[i] for i in range(len(reader))] == TEXTS
    assert [reader[i] for i in (2, 0, 1)] == [TEXTS[2], TEXTS[0], TEXTS[1]]  # random access
    clone = pickle.loads(pickle.dumps(reader))  # what worker processes get: reopened lazily
    assert [clone[i] for i in range(len(clone))] == TEXTS


def test_compressed_files_are_cached_decompressed(tmp_path, data_cache):
    reader = open_file(_write(tmp_path, "cached.jsonl.gz"))
    cached = list((data_cache / "decompressed").glob("*-cached.jsonl"))
    assert len(cached) == 1 and reader.path == str(cached[0])
    assert reader.name.endswith("cached.jsonl.gz")  # messages name the file the user wrote


BAD_LINES = [
    (b"{not json}", "invalid JSON"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"body": "x"}', "missing key 'text'"),
    (b'{"text": 7}', "'text' must be a string, got int"),
    (b'{"text": "caf\xe9"}', "invalid UTF-8"),
]


def test_json_array_file_is_read_as_its_elements(tmp_path):
    # The one rule for .json: a file starting with "[" is an array of records, for every reader.
    path = tmp_path / "arr.json"
    path.write_text('\ufeff[\n  {"text": "a"},\n  {"text": "b"}\n]\n', encoding="utf-8")
    assert list(open_file(str(path))) == ["a", "b"]
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert list(open_file(str(lines))) == ["a", "b"]


def test_json_array_bad_element_is_named_by_its_line(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"text": "a"},\n  {"body": "b"}\n]\n')
    with pytest.raises(MaxlmError, match=r"arr.json:3: missing key 'text'"):
        open_file(str(path))
    assert list(open_file(str(path), on_bad_record="skip")) == ["a"]


def test_json_array_in_a_jsonl_file_is_named_as_one(tmp_path):
    path = tmp_path / "arr.jsonl"
    path.write_text('[\n  {"text": "a"}\n]\n')
    with pytest.raises(MaxlmError, match=r"arr.jsonl:1: invalid JSON: .*a JSON array file\? expected one JSON object a line"):
        open_file(str(path))


@pytest.mark.parametrize("bad, reason", BAD_LINES)
def test_bad_record_stops_with_file_and_line(tmp_path, bad, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "ok 1"}\n\n' + bad + b'\n{"text": "ok 2"}\n')  # the bad record is on line 3
    with pytest.raises(MaxlmError) as e:
        open_file(str(path))
    assert str(e.value).startswith(f"{path}:3: {reason}")


def test_skip_mode_counts_bad_records_and_keeps_the_rest(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"text": f"good {i}"}).encode() for i in range(3)]
    path.write_bytes(b"\n".join([good[0], *[b for b, _ in BAD_LINES], good[1], good[2]]) + b"\n")
    docs = open_file(str(path), on_bad_record="skip")
    assert docs.skipped == len(BAD_LINES)
    assert [docs[i] for i in range(len(docs))] == ["good 0", "good 1", "good 2"]
    with pytest.raises(MaxlmError, match=r"bad\.jsonl:2: invalid JSON"):
        open_file(str(path))


def test_bad_text_and_parquet_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    txt = tmp_path / "t.txt"
    txt.write_bytes(b"good block\n\nfirst line\nbad \xff line\n\nlast block\n")
    # named by the document's first line (its id in curation too), the bad byte's line in the message
    with pytest.raises(MaxlmError, match=r"t\.txt:3: invalid UTF-8 on line 4"):
        open_file(str(txt))
    reader = open_file(str(txt), on_bad_record="skip")
    assert (reader.skipped, [reader[i] for i in range(len(reader))]) == (1, ["good block", "last block"])

    pq.write_table(pa.table({"text": ["a", None, "c"]}), tmp_path / "n.parquet")
    with pytest.raises(MaxlmError, match=r"n\.parquet:2: 'text' is null"):
        open_file(str(tmp_path / "n.parquet"))
    reader = open_file(str(tmp_path / "n.parquet"), on_bad_record="skip")
    assert (reader.skipped, [reader[i] for i in range(len(reader))]) == (1, ["a", "c"])
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "k.parquet")
    with pytest.raises(MaxlmError, match=r"k\.parquet: no column 'text' \(columns: body\)"):
        open_file(str(tmp_path / "k.parquet"))


def test_text_documents_rule(tmp_path):
    # BOM, CRLF, whitespace-only separators, runs of blank lines, indentation, no final newline
    raw = b"\xef\xbb\xbfone\r\ntwo  \r\n \t\r\nthree\n\n\n  indented\nlast"
    docs = list(text_documents(io.BytesIO(raw)))
    assert [(d.line, d.decode()) for d in docs] == [(1, "one\r\ntwo  "), (4, "three"), (7, "  indented\nlast")]
    assert [raw[d.start:d.end] for d in docs] == [d.raw for d in docs]  # spans index the file itself
    (tmp_path / "r.txt").write_bytes(raw)
    reader = open_file(str(tmp_path / "r.txt"))
    assert [reader[i] for i in range(len(reader))] == [d.decode() for d in docs]
    assert list(text_documents(io.BytesIO(b"\n \n\t\n"))) == []


def test_corrupt_compressed_file_is_named(tmp_path):
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(gzip.compress(_lines(TEXTS))[:-12])
    with pytest.raises(MaxlmError, match=r"broken\.jsonl\.gz: cannot decompress"):
        open_file(str(path))
