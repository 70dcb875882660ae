"""The results writer every `maxlm eval` command shares: results.json as is, results.md as tables."""

from __future__ import annotations

import json

import pytest

from maxlm.errors import MaxlmError
from maxlm.eval.report import markdown, write_report


def test_json_keeps_the_result_and_markdown_tabulates_it(tmp_path):
    result = {"acc": 0.5, "n": 4, "subjects": {"math": {"acc": 1.0, "n": 2}},
              "examples": [{"prompt": "a | b\nc", "completion": "x" * 500, "gold": "y"}]}
    out = write_report(result, tmp_path / "out", "mc: run on data")
    assert json.loads((out / "results.json").read_text()) == result
    md = (out / "results.md").read_text()
    assert md == markdown(result, "mc: run on data")
    lines = md.splitlines()
    assert lines[:6] == ["# mc: run on data", "", "| metric | value |", "| --- | --- |", "| acc | 0.5000 |", "| n | 4 |"]
    assert "| subjects | acc | n |" in lines and "| math | 1.0000 | 2 |" in lines
    row = next(l for l in lines if l.startswith("| a \\|"))
    assert row.startswith("| a \\| b<br>c | xxx") and row.count("x") < 200  # escaped, cut, still one row


def test_an_unwritable_output_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(MaxlmError, match="--output .*file/sub: cannot write the results"):
        write_report({"n": 1}, tmp_path / "file" / "sub", "t")
