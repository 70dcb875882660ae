"""Writers: shards read back by iter_records, durable appends and the torn-tail repair."""

from __future__ import annotations

import os

import pytest

from maxlm.errors import MaxlmError
from maxlm.files.formats import BadRecord
from maxlm.files.readers import iter_records
from maxlm.files.writers import append_jsonl, cut_torn_tail, open_writer, write_jsonl

RECS = [{"id": 1, "text": "a", "meta": [0]}, {"id": 2, "text": "ünï", "meta": [1, 2]}]


@pytest.mark.parametrize("fmt", ["jsonl.zst", "parquet"])
def test_shards_appear_whole_and_read_back(tmp_path, fmt):
    path = tmp_path / f"s.{fmt}"
    with open_writer(path, fmt) as w:
        for r in RECS:
            w.write(r)
        assert not path.exists()  # only complete shards carry the final name
    assert [r for _, r in iter_records(str(path))] == RECS
    with pytest.raises(RuntimeError), open_writer(tmp_path / f"t.{fmt}", fmt) as w:
        w.write(RECS[0])
        raise RuntimeError("crash")
    assert sorted(os.listdir(tmp_path)) == [f"s.{fmt}"]


def test_append_and_cut_torn_tail(tmp_path):
    path = tmp_path / "out.jsonl"
    append_jsonl(path, RECS)
    with open(path, "ab") as f:
        f.write(b'{"id": 3, "te')  # a crash inside the last write
    assert cut_torn_tail(path) == len(b'{"id": 3, "te')
    assert [r for _, r in iter_records(str(path), strict=True)] == RECS
    assert cut_torn_tail(path) == 0 and cut_torn_tail(tmp_path / "none.jsonl") == 0


def test_iter_records_names_bad_records_and_strict_raises(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, RECS)
    with open(path, "ab") as f:
        f.write(b"{oops\n")
    items = list(iter_records(str(path), name="x"))
    assert items[:2] == [(1, RECS[0]), (2, RECS[1])]
    assert isinstance(items[2][1], BadRecord) and items[2][1].where == "x:3" and "invalid JSON" in items[2][1].problem
    with pytest.raises(MaxlmError, match=r"x.jsonl:3: invalid JSON"):
        list(iter_records(str(path), strict=True))
