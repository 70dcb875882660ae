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

import hashlib
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter
from data_pipelines.curate.stats import StageStats
from maxlm.config import ranged
from maxlm.errors import MaxlmError
from maxlm.files.readers import iter_records

# lm-eval's normalisation: ASCII upper to lower case, ASCII punctuation deleted, all else kept
_NORMALISE = str.maketrans(string.ascii_uppercase, string.ascii_lowercase, string.punctuation)
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so that each word's place changes the hash
HIT_PREFIX = "hit:"  # counters named hit:<eval set>:<item> count the documents that hit that item


def normalised_words(text: str) -> list[str]:
    """Returns the words of `text` as lm-eval splits them: ASCII lowercased, ASCII punctuation deleted."""
    return text.translate(_NORMALISE).split()


def word_ngrams(text: str, n: int) -> Iterator[str]:
    """Yields the normalised n-grams of `text`: `n` consecutive words joined by one space."""
    words = normalised_words(text)
    for i in range(len(words) - n + 1):
        yield " ".join(words[i:i + n])


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Returns a 64-bit hash [W - n + 1] uint64 of each n-gram of `word_ngrams(text, n)`, in order.

    Hashes, not strings: an index of a large eval set stays a few bytes an n-gram and is shared
    by forked workers. Two different n-grams collide with probability about 2^-64 each.
    """
    words = normalised_words(text)
    count = len(words) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    # blake2b, not hash(): the same value in every worker process (str hashes are salted per process)
    word_W = np.fromiter((int.from_bytes(hashlib.blake2b(w.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
                          for w in words), np.uint64, len(words))
    acc_G = np.zeros(count, np.uint64)
    for j in range(n):  # a polynomial in the word hashes, mod 2^64 (uint64 arithmetic wraps)
        acc_G = acc_G * _MULTIPLIER + word_W[j:j + count]
    return acc_G


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


@dataclass
class EvalIndex:
    """The n-gram hashes of every eval item, sorted, and the item each belongs to."""

    hash_G: np.ndarray  # [G] uint64, sorted
    item_G: np.ndarray  # [G] int32: index into items
    items: list[str]  # "set:id" names

    def hits(self, h_D: np.ndarray) -> set[int]:
        """Returns the indices of the items holding any of the n-gram hashes `h_D`."""
        lo_D = np.searchsorted(self.hash_G, h_D, "left")
        present_D = lo_D < len(self.hash_G)
        present_D[present_D] = self.hash_G[lo_D[present_D]] == h_D[present_D]
        if not present_D.any():
            return set()
        found = set()
        for h in np.unique(h_D[present_D]):
            lo, hi = np.searchsorted(self.hash_G, h, "left"), np.searchsorted(self.hash_G, h, "right")
            found.update(self.item_G[lo:hi].tolist())
        return found


def build_index(specs: list[EvalFile], n: int) -> EvalIndex:
    """Returns the EvalIndex of the eval sets' items (each distinct n-gram of an item once)."""
    hashes, owners, items = [], [], []
    for spec in specs:
        set_name = spec.name or Path(spec.path).name
        for line, rec in iter_records(spec.path, strict=True, setting="the eval file's format"):
            where = f"{spec.path}:{line}"
            item_id = rec.get(spec.id_key) if spec.id_key and isinstance(rec, dict) else line
            if item_id is None:
                raise MaxlmError(f"{where}: eval record has no id field {spec.id_key!r}; fix its `id_key`")
            texts = _item_texts(rec, spec, where)
            h = np.unique(np.concatenate([ngram_hashes(t, n) for t in texts])) if texts else np.zeros(0, np.uint64)
            hashes.append(h)
            owners.append(np.full(len(h), len(items), np.int32))
            items.append(f"{set_name}:{item_id}")
    hash_G = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    item_G = np.concatenate(owners) if owners else np.zeros(0, np.int32)
    order = np.argsort(hash_G, kind="stable")
    return EvalIndex(hash_G[order], item_G[order], items)


class Decontaminate(Filter):
    """Drops (or, with action: report, marks) documents sharing an n-gram with an eval item."""

    name = "decontaminate"
    Params = DecontaminateParams

    def setup(self) -> None:
        self.index = build_index(self.p.evals, self.p.ngram)

    def hits(self, doc: Document) -> list[str]:
        """Returns the names of the eval items `doc` shares an n-gram with, in eval-file order."""
        found: set[int] = set()
        for f in self.p.fields:
            text = doc.string(f)
            if text:
                found |= self.index.hits(ngram_hashes(text, self.p.ngram))
        return [self.index.items[k] for k in sorted(found)]

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
