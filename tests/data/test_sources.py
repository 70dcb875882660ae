"""Sources: a file, glob or builtin corpus opened as one list of texts; globs, overrides, bad records."""

from __future__ import annotations

import json

import pytest

from maxlm.config import SourceConfig
from maxlm.data.sources import expand, iter_texts, open_source
from maxlm.errors import MaxlmError

TEXTS = ["first document", "second one,\nwith two lines", "third: ünïcödé ✓"]


def _write(tmp_path, name: str) -> str:
    """Returns the path of a file holding TEXTS: jsonl, or plain text documents for .txt."""
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("\n\n".join(TEXTS) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    return str(path)


def test_format_and_text_key_override(tmp_path):
    path = tmp_path / "data.dat"
    path.write_text(json.dumps({"body": "hello"}) + "\n")
    docs = open_source(SourceConfig(path=str(path), format="jsonl", text_key="body"))
    assert [docs[0]] == ["hello"]
    with pytest.raises(MaxlmError, match="unknown file type"):
        open_source(SourceConfig(path=str(path)))


def test_glob_expands_sorted_across_files(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "c.txt"]:
        _write(tmp_path, name)
    assert expand(str(tmp_path / "*.jsonl")) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    docs = open_source(SourceConfig(path=str(tmp_path / "[ab].jsonl")))
    assert len(docs) == 6 and [docs[i] for i in (0, 3, 5)] == [TEXTS[0], TEXTS[0], TEXTS[2]]


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(MaxlmError, match=r"nope\.jsonl: file not found"):
        open_source(SourceConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(MaxlmError, match=r"\*\.parquet: no file matches"):
        open_source(SourceConfig(path=str(tmp_path / "*.parquet")))
    with pytest.raises(MaxlmError, match="is a directory"):
        open_source(SourceConfig(path=str(tmp_path)))
    with pytest.raises(MaxlmError, match="unknown builtin corpus"):
        open_source(SourceConfig(path="builtin:nope"))


def test_iter_texts_interleaves_sources(tmp_path, write_jsonl):
    a = write_jsonl(tmp_path / "a.jsonl", ["a0", "a1", "a2"])
    b = write_jsonl(tmp_path / "b.jsonl", ["b0"])
    assert list(iter_texts([SourceConfig(path=str(a)), SourceConfig(path=str(b))])) == ["a0", "b0", "a1", "a2"]


def test_json_array_is_one_rule_for_pretrain_and_sft(tmp_path):
    # The same .json array is read by pretraining's sources and by post-training records alike.
    from maxlm.data.records import read_records

    path = tmp_path / "set.json"
    rows = [{"text": "a doc", "prompt": "p1", "response": "r1"}, {"text": "b doc", "prompt": "p2", "response": "r2"}]
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    docs = open_source(SourceConfig(path=str(path)))
    assert [docs[i] for i in range(len(docs))] == ["a doc", "b doc"]
    records, skipped = read_records(str(path), "sft")
    assert [r.messages[-1]["content"] for r in records] == ["r1", "r2"] and skipped == 0
