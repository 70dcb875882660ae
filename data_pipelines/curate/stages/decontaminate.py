"""Decontamination: documents that share a long word n-gram with an evaluation set are dropped (or reported).

The test follows GPT-3 (Brown et al. 2020, appendix C: "we look for N-grams ... we used N = 13")
as lm-evaluation-harness implements it (`lm_eval/decontamination/janitor.py`): text is
normalised by lowercasing ASCII letters and deleting ASCII punctuation (`string.punctuation`, so
"48/2=24" becomes "48224" and "don't" "dont"), split on whitespace, and every run of `n`
consecutive words is an n-gram. One shared n-gram makes a document contaminated. Eval items of
fewer than `ngram` words have no n-gram, so they can never be hit (as in lm-eval; GPT-3 lowered N
for such tasks: give them a stage of their own with a lower `ngram`).
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter
from data_pipelines.curate.stats import StageStats
from maxlm.config import ranged
from maxlm.errors import MaxlmError
from maxlm.files.readers import iter_records

# lm-eval's normalisation: ASCII upper to lower case, ASCII punctuation deleted, all else kept
_NORMALISE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)
HIT_PREFIX = "hit:"  # counters named hit:<eval set>:<item> count the documents that hit that item


def word_ngrams(text: str, n: int) -> Iterator[str]:
    """Yields the normalised n-grams of `text`: `n` consecutive words joined by one space."""
    words = text.translate(_NORMALISE).split()
    for i in range(len(words) - n + 1):
        yield " ".join(words[i:i + n])


@dataclass
class EvalFile:
    """One evaluation set: a jsonl/json/parquet file and the fields of its records that hold item text."""

    path: str
    fields: list[str] = field(default_factory=list)  # e.g. [question, answer] (gsm8k), [question, choices] (MMLU)
    name: str = ""  # its name in the report; "": the file name
    id_key: str = ""  # the field holding an item's id; "": the item's line in the file

    def __post_init__(self):
        if not self.fields:
            raise ValueError("fields: name at least one field of the eval records, e.g. [question, answer]")
        if not os.path.isfile(self.path):
            raise ValueError(f"path: eval file {self.path} not found")


@dataclass
class DecontaminateParams:
    """The eval sets to check against; ngram = 13 words as GPT-3 and lm-evaluation-harness use."""

    evals: list[EvalFile] = field(default_factory=list)
    ngram: int = ranged(13, gt=0)  # words per n-gram
    action: Literal["drop", "report"] = "drop"  # report: keep the document, name what it hit in meta[hits_key]
    fields: list[str] = field(default_factory=lambda: ["text"])  # document fields checked ("text": the document text)
    hits_key: str = "contaminated_by"  # metadata field for the hit items under action: report

    def __post_init__(self):
        if not self.evals:
            raise ValueError("evals: list at least one eval file, e.g. [{path: gsm8k_test.jsonl, fields: [question, answer]}]")
        if not self.fields:
            raise ValueError("fields: name at least one document field to check, e.g. [text]")


def _item_texts(rec, spec: EvalFile, where: str) -> list[str]:
    """Returns the texts of one eval record's fields (a list field gives each of its strings)."""
    if not isinstance(rec, dict):
        raise MaxlmError(f"{where}: expected a JSON object in an eval set, got {type(rec).__name__}")
    texts = []
    for f in spec.fields:
        if f not in rec:
            raise MaxlmError(f"{where}: eval record has no field {f!r} (keys: {', '.join(sorted(rec)[:8])}); fix its `fields`")
        value = rec[f]
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise MaxlmError(f"{where}: eval field {f!r} must be a string or a list of strings, got {value!r:.80}")
        texts += values
    return texts


def build_index(specs: list[EvalFile], n: int) -> tuple[dict[str, list[int]], list[str]]:
    """Returns ({n-gram: indices of the items holding it}, item names "set:id") of the eval sets."""
    index: dict[str, list[int]] = {}
    items: list[str] = []
    for spec in specs:
        set_name = spec.name or Path(spec.path).name
        for line, rec in iter_records(spec.path, strict=True, setting="the eval file's format"):
            where = f"{spec.path}:{line}"
            item_id = rec.get(spec.id_key) if spec.id_key and isinstance(rec, dict) else line
            if item_id is None:
                raise MaxlmError(f"{where}: eval record has no id field {spec.id_key!r}; fix its `id_key`")
            k = len(items)
            items.append(f"{set_name}:{item_id}")
            for text in _item_texts(rec, spec, where):
                for gram in word_ngrams(text, n):
                    holders = index.setdefault(gram, [])
                    if not holders or holders[-1] != k:  # an item's repeated n-gram counts once
                        holders.append(k)
    return index, items


class Decontaminate(Filter):
    """Drops (or, with action: report, marks) documents sharing an n-gram with an eval item."""

    name = "decontaminate"
    Params = DecontaminateParams

    def setup(self) -> None:
        self.index, self.items = build_index(self.p.evals, self.p.ngram)

    def hits(self, doc: Document) -> list[str]:
        """Returns the names of the eval items `doc` shares an n-gram with, in eval-file order."""
        found: set[int] = set()
        for f in self.p.fields:
            text = doc.string(f)
            if text:
                for gram in word_ngrams(text, self.p.ngram):
                    holders = self.index.get(gram)
                    if holders:
                        found.update(holders)
        return [self.items[k] for k in sorted(found)]

    def process(self, doc: Document, stats: StageStats) -> str | None:
        hit = self.hits(doc)
        if not hit:
            return None
        stats.count("documents_hit")
        for item in hit:
            stats.count(HIT_PREFIX + item)
        if self.p.action == "report":
            doc.meta[self.p.hits_key] = hit
            return None
        return "contaminated"
