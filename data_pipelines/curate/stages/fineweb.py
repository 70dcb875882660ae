"""The FineWeb rules (Penedo et al. 2024): line punctuation, short lines, duplicated lines, newline ratios.

Every rule computes what datatrove's FineWebQualityFilter computes, so decisions equal its
decisions (tests/data_pipelines/curate/test_datatrove_parity.py): lines are the non-blank lines,
unstripped (a line ending in spaces does not end in punctuation); punctuation means a sentence
terminal (. ! ? and their CJK forms; not : ; or quotes); the duplicated characters are taken of
the text without its newlines; words are en_words.words, punctuation tokens included; each
threshold is exceeded strictly, as in that code. Every rule can be changed, and set to null to
switch it off.

The duplicated-line threshold is the reference code's 0.01. The FineWeb write-up gives
"fraction of characters in duplicated lines >= 0.1" instead; the code is what the released
data set and the parity test follow, and 0.1 stays one YAML value away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines.curate.document import Document
from data_pipelines.curate import en_words
from data_pipelines.curate.stage import Filter, check_fraction, check_positive
from data_pipelines.curate.stats import StageStats


@dataclass
class FineWebParams:
    """FineWeb's own rules; thresholds from Penedo et al. 2024 (FineWeb), section 3.3."""

    min_line_punct_ratio: float | None = 0.12  # remove if lines ending in punctuation < this share
    max_short_line_ratio: float | None = 0.67  # remove if lines of <= short_line_length chars > this share
    short_line_length: int = 30
    max_dup_line_char_ratio: float | None = 0.01  # remove if chars in repeated lines > this share
    max_newline_word_ratio: float | None = 0.3  # remove if newlines per word > this
    stop_chars: list[str] = field(default_factory=lambda: sorted(en_words.SENTENCE_END_CHARS))

    def __post_init__(self):
        for k in ("min_line_punct_ratio", "max_short_line_ratio", "max_dup_line_char_ratio"):
            check_fraction(k, getattr(self, k))
        check_positive("max_newline_word_ratio", self.max_newline_word_ratio)
        check_positive("short_line_length", self.short_line_length)


class FineWeb(Filter):
    """Removes list-like, line-duplicated and fragmentary pages by FineWeb's line statistics."""

    name = "fineweb"
    Params = FineWebParams

    def __init__(self, params: FineWebParams):
        super().__init__(params)
        self.stop_chars = tuple(params.stop_chars)

    def process(self, doc: Document, stats: StageStats) -> str | None:
        p, text = self.p, doc.text
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not lines:
            return "empty"
        punct = sum(1 for ln in lines if ln.endswith(self.stop_chars)) / len(lines)
        stats.value("line_punct_ratio", punct)
        if p.min_line_punct_ratio is not None and punct < p.min_line_punct_ratio:
            return "line_punct_ratio"
        short = sum(1 for ln in lines if len(ln) <= p.short_line_length) / len(lines)
        stats.value("short_line_ratio", short)
        if p.max_short_line_ratio is not None and short > p.max_short_line_ratio:
            return "short_line_ratio"
        if p.max_dup_line_char_ratio is not None:
            seen: set[str] = set()
            dup_chars = 0
            for ln in lines:
                if ln in seen:
                    dup_chars += len(ln)
                else:
                    seen.add(ln)
            ratio = dup_chars / (len(text) - text.count("\n"))
            stats.value("dup_line_char_ratio", ratio)
            if ratio > p.max_dup_line_char_ratio:
                return "dup_line_char_ratio"
        if p.max_newline_word_ratio is not None:
            n_words = len(en_words.words(text))  # >= 1: a non-blank line holds a token
            if text.count("\n") / n_words > p.max_newline_word_ratio:
                return "newline_word_ratio"
        return None
