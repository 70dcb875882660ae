"""Toxicity: a shipped word-list filter plus an optional classifier named by a callable path."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter, check_fraction, check_positive
from data_pipelines.curate.stats import StageStats
from maxlm.errors import MaxlmError

DEFAULT_WORDS = Path(__file__).with_name("toxicity_words.txt")


def load_words(path: str | Path) -> list[str]:
    """Returns the lowercased entries of a word list: one a line, `#` starts a comment."""
    p = Path(path)
    if not p.is_file():
        raise MaxlmError(f"stage toxicity: words_file {p} not found")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        w = line.split("#", 1)[0].strip().lower()
        if w:
            out.append(w)
    return out


def load_callable(path: str) -> Callable[[str], float]:
    """Returns the function named "package.module:function"; raises ImportError if unavailable."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise MaxlmError(f"stage toxicity: classifier must look like package.module:function, got {path!r}")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ImportError(f"{path} is not a callable")
    return fn


@dataclass
class ToxicityParams:
    """Word list and classifier settings; min_hits 1 follows C4's bad-words rule (Raffel et al. 2020)."""

    words_file: str = ""  # "": the shipped list data_pipelines/curate/stages/toxicity_words.txt
    min_hits: int = 1  # remove when this many listed words occur
    classifier: str = ""  # optional "module:function" taking text, returning a score in [0, 1]
    classifier_threshold: float = 0.5  # remove when the score is at least this
    score_key: str = "toxicity_score"  # metadata field for the classifier's score

    def __post_init__(self):
        check_positive("min_hits", self.min_hits, allow_zero=False)
        check_fraction("classifier_threshold", self.classifier_threshold)


class Toxicity(Filter):
    """Removes documents with listed words, then (when available) documents the classifier flags."""

    name = "toxicity"
    Params = ToxicityParams

    def setup(self) -> None:
        words = load_words(self.p.words_file or DEFAULT_WORDS)
        # longest first so that multi-word entries win over their prefixes
        alt = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alt})(?!\w)", re.IGNORECASE)
        self.scorer = None
        self.unavailable = ""
        if self.p.classifier:
            try:
                self.scorer = load_callable(self.p.classifier)
            except ImportError as e:
                # optional by design: a missing model package skips the classifier, noted in the report
                self.unavailable = f"{self.p.classifier}: {e}"

    def process(self, doc: Document, stats: StageStats) -> str | None:
        hits = len(self.pattern.findall(doc.text))
        stats.value("word_hits", hits)
        if hits >= self.p.min_hits:
            return "word_list"
        if self.unavailable:
            stats.count("classifier_unavailable")
        if self.scorer is not None:
            score = float(self.scorer(doc.text))
            doc.meta[self.p.score_key] = round(score, 4)
            stats.value("classifier_score", score)
            if score >= self.p.classifier_threshold:
                return "classifier"
        return None
