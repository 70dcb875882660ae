"""Readers: every format and compression, ids, metadata, and bad records reported with file:line."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest
import pyarrow.parquet as pq
import zstandard

from data_pipelines.curate.config import InputConfig
from data_pipelines.curate.document import Document
from maxlm.files.formats import BadRecord
from data_pipelines.curate.inputs import list_inputs, read_documents
from maxlm.files.readers import open_file
from maxlm.errors import MaxlmError

GOOD = [{"text": "first document", "url": "http://a", "n": 1}, {"id": "x7", "text": "second", "tags": ["a", "b"]}]


def _read(tmp_path, name, cfg=InputConfig()):
    (f,) = list_inputs(str(tmp_path / name))
    return list(read_documents(f, cfg))


def _jsonl_bytes(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def test_jsonl_plain_gz_zst_agree(tmp_path):
    data = _jsonl_bytes([json.dumps(r).encode() for r in GOOD])
    (tmp_path / "a.jsonl").write_bytes(data)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst"):
        docs = _read(tmp_path, name)
        assert [d.text for d in docs] == ["first document", "second"]
        assert docs[0].id == f"{name}:1"  # no id in the record: file:line
        assert docs[1].id == "x7"  # the record's own id is kept as-is
        assert docs[0].meta == {"url": "http://a", "n": 1} and docs[1].meta == {"tags": ["a", "b"]}
        assert docs[0].to_record() == {"id": f"{name}:1", "text": "first document", "url": "http://a", "n": 1}


def test_curation_and_training_accept_the_same_files(tmp_path):
    # Extensions are detected by maxlm.files.formats for both; a .zst of two frames is read whole.
    lines = [json.dumps(r).encode() for r in GOOD]
    two_frames = zstandard.ZstdCompressor().compress(lines[0] + b"\n") + zstandard.ZstdCompressor().compress(lines[1] + b"\n")
    for name in ("a.ndjson", "b.json", "c.jsonl.zstd", "d.jsonl.zst"):
        (tmp_path / name).write_bytes(two_frames if "zst" in name else _jsonl_bytes(lines))
        assert [d.text for d in _read(tmp_path, name)] == ["first document", "second"], name
        reader = open_file(str(tmp_path / name))
        assert [reader[i] for i in range(len(reader))] == ["first document", "second"], name
    (tmp_path / "e.arrayrecord").write_bytes(b"")
    with pytest.raises(MaxlmError, match=r"e.arrayrecord: curation reads jsonl, parquet, text or warc, not arrayrecord"):
        _read(tmp_path, "e.arrayrecord")
    (tmp_path / "f.dat").write_bytes(b"")
    with pytest.raises(MaxlmError, match=r"f.dat: unknown file type; .* or set input.format"):
        _read(tmp_path, "f.dat")


def test_bad_records_are_reported_and_good_ones_kept(tmp_path):
    lines = [
        json.dumps(GOOD[0]).encode(),
        b'{"text": "broken',  # invalid JSON
        b'{"title": "no text here"}',  # missing text
        b'{"text": "bad \xff\xfe bytes"}',  # undecodable
        b"[1, 2, 3]",  # not an object
        b'{"text": 42}',  # text not a string
        b"",  # blank lines are skipped silently
        json.dumps(GOOD[1]).encode(),
    ]
    (tmp_path / "mixed.jsonl").write_bytes(_jsonl_bytes(lines))
    items = _read(tmp_path, "mixed.jsonl")
    docs = [i for i in items if isinstance(i, Document)]
    bad = {i.where: i.problem for i in items if isinstance(i, BadRecord)}
    assert [d.text for d in docs] == ["first document", "second"]
    assert docs[1].where == "mixed.jsonl:8"
    assert set(bad) == {"mixed.jsonl:2", "mixed.jsonl:3", "mixed.jsonl:4", "mixed.jsonl:5", "mixed.jsonl:6"}
    assert "invalid JSON" in bad["mixed.jsonl:2"]
    assert "missing text" in bad["mixed.jsonl:3"]
    assert "invalid UTF-8" in bad["mixed.jsonl:4"]
    assert "JSON object" in bad["mixed.jsonl:5"] and "must be a string" in bad["mixed.jsonl:6"]


def test_truncated_gzip_keeps_the_lines_before(tmp_path):
    data = _jsonl_bytes([json.dumps({"text": f"doc {i} " * 50}).encode() for i in range(200)])
    blob = gzip.compress(data)
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) * 2 // 3])
    items = _read(tmp_path, "cut.jsonl.gz")
    docs = [i for i in items if isinstance(i, Document)]
    assert 0 < len(docs) < 200 and isinstance(items[-1], BadRecord)
    assert "unreadable from here on" in items[-1].problem
    assert items[-1].where == f"cut.jsonl.gz:{len(docs) + 1}"


def test_parquet_and_text_key_choice(tmp_path):
    pq.write_table(pa.table({"prompt": ["p1", None], "instruction": [None, "i2"], "output": ["o1", "o2"]}), tmp_path / "s.parquet")
    docs = _read(tmp_path, "s.parquet", InputConfig(text_key=["prompt", "instruction"]))
    assert [(d.text_key, d.text, d.id) for d in docs] == [("prompt", "p1", "s.parquet:1"), ("instruction", "i2", "s.parquet:2")]
    assert docs[1].to_record()["instruction"] == "i2" and docs[1].meta["output"] == "o2"


def test_text_documents_are_the_ones_maxlm_train_reads(tmp_path):
    raw = b"para one\r\nline two\r\n\n\n  \npara three\nbad \xff line\n\nlast para"
    (tmp_path / "t.txt").write_bytes(raw)
    items = _read(tmp_path, "t.txt")
    assert [(type(i).__name__, i.where) for i in items] == [("Document", "t.txt:1"), ("BadRecord", "t.txt:6"), ("Document", "t.txt:9")]
    assert [d.id for d in items if isinstance(d, Document)] == ["t.txt:1", "t.txt:9"]  # file:line of the first line
    assert "invalid UTF-8 on line 7" in items[1].problem
    train = open_file(str(tmp_path / "t.txt"), on_bad_record="skip")
    assert [d.text for d in items if isinstance(d, Document)] == [train[i] for i in range(len(train))] == ["para one\r\nline two", "last para"]
    (tmp_path / "t.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    assert [(type(i).__name__, i.where.replace(".zst", "")) for i in _read(tmp_path, "t.txt.zst")] == [(type(i).__name__, i.where) for i in items]


def test_truncated_text_keeps_the_documents_before(tmp_path):
    data = "".join(f"document {i} " * 30 + "\n\n" for i in range(300)).encode()  # document i on line 2i+1
    blob = gzip.compress(data)
    (tmp_path / "cut.txt.gz").write_bytes(blob[: len(blob) // 2])
    items = _read(tmp_path, "cut.txt.gz")
    docs = [i for i in items if isinstance(i, Document)]
    assert 0 < len(docs) < 300 and [d.where for d in docs] == [f"cut.txt.gz:{2 * i + 1}" for i in range(len(docs))]
    assert isinstance(items[-1], BadRecord) and "unreadable from here on" in items[-1].problem
    assert items[-1].where == f"cut.txt.gz:{2 * len(docs)}"  # the line after the last whole document


def test_glob_labels_are_relative(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "y.jsonl").write_text('{"text": "b"}\n')
    files = list_inputs(str(tmp_path / "**" / "*.jsonl"))
    assert [f.label for f in files] == ["sub/x.jsonl", "y.jsonl"]


def test_json_array_is_read_by_the_one_rule(tmp_path):
    # The rule maxlm train uses: a .json file starting with "[" is an array, elements named by their first line.
    (tmp_path / "set.json").write_text('[\n {"text": "a"},\n {"body": "b"},\n {"text": "c"}\n]\n')
    items = _read(tmp_path, "set.json")
    assert [(type(i).__name__, i.where) for i in items] == [("Document", "set.json:2"), ("BadRecord", "set.json:3"), ("Document", "set.json:4")]
    (tmp_path / "lines.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    assert [d.text for d in _read(tmp_path, "lines.json")] == ["a", "b"]
