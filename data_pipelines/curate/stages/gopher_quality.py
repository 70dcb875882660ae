"""The Gopher quality rules (Rae et al. 2021): word counts and lengths, symbols, bullets, ellipses, stop words.

Thresholds are the published ones; every rule can be changed, and set to null to switch it off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from data_pipelines.curate.document import Document
from data_pipelines.curate.segment import strip_punct
from data_pipelines.curate.stage import Filter, check_fraction, check_order, check_positive
from data_pipelines.curate.stats import StageStats

# a whitespace token that contains at least one letter (not digit, not underscore)
ALPHA_TOKEN_RE = re.compile(r"(?<!\S)\S*?[^\W\d_]")
BULLETS = ("•", "●", "○", "▪", "▫", "‣", "◦", "⁃", "∙", "·", "-", "–", "*", "➢", "►", "✓")


@dataclass
class GopherQualityParams:
    """Gopher quality rules; defaults from Rae et al. 2021 (Gopher), Appendix A.1.1."""

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1  # "#" and "..."/"…" per word
    max_bullet_lines_ratio: float | None = 0.9  # lines starting with a bullet
    max_ellipsis_lines_ratio: float | None = 0.3  # lines ending with an ellipsis
    min_alpha_words_ratio: float | None = 0.8  # words containing a letter
    min_stop_words: int | None = 2  # distinct words of `stop_words` that must occur
    stop_words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])

    def __post_init__(self):
        check_order("min_words", self.min_words, "max_words", self.max_words)
        check_order("min_mean_word_length", self.min_mean_word_length, "max_mean_word_length", self.max_mean_word_length)
        for k in ("max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio"):
            check_fraction(k, getattr(self, k))
        check_positive("max_symbol_word_ratio", self.max_symbol_word_ratio)
        check_positive("min_stop_words", self.min_stop_words)


class GopherQuality(Filter):
    """Removes documents failing Gopher's length, word-shape, symbol, line-shape and stop-word rules."""

    name = "gopher_quality"
    Params = GopherQualityParams

    def __init__(self, params: GopherQualityParams):
        super().__init__(params)
        self.stop = frozenset(w.lower() for w in params.stop_words)

    def process(self, doc: Document, stats: StageStats) -> str | None:
        p, text = self.p, doc.text
        toks = text.split()
        n = len(toks)
        stats.value("words", n)
        if p.min_words is not None and n < p.min_words:
            return "too_few_words"
        if p.max_words is not None and n > p.max_words:
            return "too_many_words"
        if n == 0:
            return "empty"
        bare = [b for b in map(strip_punct, toks) if b]
        mean_len = sum(map(len, bare)) / len(bare) if bare else 0.0
        stats.value("mean_word_length", mean_len)
        if p.min_mean_word_length is not None and mean_len < p.min_mean_word_length:
            return "mean_word_length_low"
        if p.max_mean_word_length is not None and mean_len > p.max_mean_word_length:
            return "mean_word_length_high"
        # "…" and "..." are both ellipses; "...." counts once per "..."
        symbols = text.count("#") + text.count("...") + text.count("…")
        stats.value("symbol_word_ratio", symbols / n)
        if p.max_symbol_word_ratio is not None and symbols / n > p.max_symbol_word_ratio:
            return "symbol_word_ratio"
        lines = [ln.strip() for ln in text.split("\n")]
        lines = [ln for ln in lines if ln]
        if lines:
            bullet = sum(1 for ln in lines if ln.startswith(BULLETS)) / len(lines)
            ellipsis = sum(1 for ln in lines if ln.endswith(("...", "…"))) / len(lines)
            if p.max_bullet_lines_ratio is not None and bullet > p.max_bullet_lines_ratio:
                return "bullet_lines"
            if p.max_ellipsis_lines_ratio is not None and ellipsis > p.max_ellipsis_lines_ratio:
                return "ellipsis_lines"
        alpha = len(ALPHA_TOKEN_RE.findall(text)) / n
        stats.value("alpha_words_ratio", alpha)
        if p.min_alpha_words_ratio is not None and alpha < p.min_alpha_words_ratio:
            return "alpha_words_ratio"
        if p.min_stop_words:
            # "at least two of the following English words": counted as distinct words
            found = self.stop.intersection(b.lower() for b in bare)
            if len(found) < p.min_stop_words:
                return "stop_words"
        return None
