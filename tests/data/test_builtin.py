"""builtin:stdlib-docs: built from the standard library's source, split by file, read like jsonl."""

from __future__ import annotations

import sys

from maxlm.config import SourceConfig
from maxlm.data.builtin import clean_docstring, documents_of_source
from maxlm.data.sources import expand, open_source


def test_corpus_materializes_with_disjoint_splits(data_cache):
    before = set(sys.modules)
    train = open_source(SourceConfig(path="builtin:stdlib-docs"))
    held_out = open_source(SourceConfig(path="builtin:stdlib-docs@eval"))
    assert not {"this", "antigravity"} & (set(sys.modules) - before)  # parsed, never imported
    (train_file,) = expand("builtin:stdlib-docs")
    assert train_file.startswith(str(data_cache)) and train_file.endswith("-train.jsonl")
    train_texts = [train[i] for i in range(len(train))]
    eval_texts = [held_out[i] for i in range(len(held_out))]
    assert sum(len(t.encode()) for t in train_texts) > 1_000_000
    assert 0.01 < len(eval_texts) / (len(train_texts) + len(eval_texts)) < 0.04
    assert not set(train_texts) & set(eval_texts)
    assert len(set(train_texts)) == len(train_texts)
    assert not any(line.lstrip().startswith(">>>") for t in train_texts for line in t.splitlines())
    assert min(map(len, train_texts)) >= 64
    # A second open reads the cached files instead of rebuilding them.
    assert expand("builtin:stdlib-docs") == [train_file]


def test_extraction_of_one_source_file():
    source = b'''#!/usr/bin/env python
"""Tools for frobbing widgets.

Use frob() to frob a widget, like so:

    >>> frob(1)
    2

That is all there is to say about frobbing widgets in this module.
"""
# This comment explains at some length why the widget must be frobbed before use.
x = 1  # trailing comments are not whole-line blocks
# x = frob(y)
def frob(w):
    "Short."
    s = """
# not a comment: inside a string
"""
'''
    docs = documents_of_source(source)
    assert docs[0] == clean_docstring(docs[0])
    assert ">>>" not in docs[0] and "That is all" in docs[0] and "Use frob()" in docs[0]
    assert docs[1] == "This comment explains at some length why the widget must be frobbed before use."
    assert len(docs) == 2  # "Short." is too short; code in comments and strings is not prose
