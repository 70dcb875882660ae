"""Offline language identification with py3langid (its model ships inside the wheel)."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter, check_fraction, check_positive
from data_pipelines.curate.stats import StageStats
from maxlm.errors import MaxlmError

_IDENTIFIER = None  # one model per process: loading it takes most of a second


def identifier():
    """Returns the process-wide py3langid identifier with normalized probabilities."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError:
            raise MaxlmError("stage langid needs py3langid: pip install py3langid") from None
        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


@dataclass
class LangIdParams:
    """Keep-list and score threshold; 0.65 is FineWeb's English threshold (Penedo et al. 2024, section 3.1)."""

    keep: list[str] = field(default_factory=lambda: ["en"])  # ISO 639-1 codes; empty keeps every language
    min_score: float = 0.65
    max_chars: int = 2000  # classify a prefix: the score settles long before, and cost grows with length
    lang_key: str = "lang"  # metadata fields that receive the label and the score
    score_key: str = "lang_score"

    def __post_init__(self):
        check_fraction("min_score", self.min_score)
        check_positive("max_chars", self.max_chars, allow_zero=False)


class LangId(Filter):
    """Labels each document's language and score; removes those outside `keep` or below `min_score`."""

    name = "langid"
    Params = LangIdParams

    def setup(self) -> None:
        ident = identifier()
        unknown = set(self.p.keep) - set(ident.labels)
        if unknown:
            raise MaxlmError(f"stage langid: unknown language codes {sorted(unknown)}; py3langid knows {len(ident.labels)} codes such as en, de, fr")
        self.ident = ident

    def process(self, doc: Document, stats: StageStats) -> str | None:
        lang, score = self.ident.classify(doc.text[: self.p.max_chars])
        score = round(float(score), 4)
        doc.meta[self.p.lang_key] = lang
        doc.meta[self.p.score_key] = score
        stats.value("score", score)
        stats.count(f"lang:{lang}")
        if self.p.keep and lang not in self.p.keep:
            return "language"
        if score < self.p.min_score:
            return "low_score"
        return None
