"""Length limits: documents outside a range of characters or words are dropped.

Thresholds are the published ones; every rule can be changed, and set to null to switch it off.
"""

from __future__ import annotations

from dataclasses import dataclass

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter, check_order
from data_pipelines.curate.stats import StageStats


@dataclass
class LengthParams:
    """Length limits on one field; word limits default to Gopher's 50..100,000 (Rae et al. 2021)."""

    field: str = "text"  # "text" is the document text; any other name is a metadata field
    min_chars: int | None = None
    max_chars: int | None = None
    min_words: int | None = 50
    max_words: int | None = 100_000

    def __post_init__(self):
        check_order("min_chars", self.min_chars, "max_chars", self.max_chars)
        check_order("min_words", self.min_words, "max_words", self.max_words)


class Length(Filter):
    """Removes documents whose field is missing or outside the character / word limits."""

    name = "length"
    Params = LengthParams

    def process(self, doc: Document, stats: StageStats) -> str | None:
        p = self.p
        value = doc.string(p.field)
        if value is None:
            return f"missing_{p.field}"
        n_chars = len(value)
        stats.value(f"{p.field}_chars", n_chars)
        if p.min_chars is not None and n_chars < p.min_chars:
            return "too_short_chars"
        if p.max_chars is not None and n_chars > p.max_chars:
            return "too_long_chars"
        if p.min_words is not None or p.max_words is not None:
            n_words = len(value.split())
            if p.min_words is not None and n_words < p.min_words:
                return "too_few_words"
            if p.max_words is not None and n_words > p.max_words:
                return "too_many_words"
        return None
