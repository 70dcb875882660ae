"""The Gopher quality rules (Rae et al. 2021): word counts and lengths, symbols, bullets, ellipses, stop words.

Every rule computes what datatrove's GopherQualityFilter computes, so decisions equal its
decisions (tests/data_pipelines/curate/test_datatrove_parity.py). Words are en_words.words:
spaCy's English tokens, so "f(a, b)." is five words and "," is one. The word count and the
mean word length take the words that are not all punctuation; the "#" and ellipsis ratios and
the share of words with a letter take every word; lines are all lines, blank ones included; a
bullet line starts with "•" or "-"; stop words match case and all. Thresholds are the published
ones; every rule can be changed, and set to null to switch it off.

The paper's rule is that "80% of words in a document contain at least one alphabetic
character". Taken over every token, a comma or a full stop is a word without a letter, so
punctuated prose fails: on parity_corpus datatrove removes 97 of 250 Shakespeare scenes and
most worked math answers this way. alpha_ratio_of: words takes the share of the words that are
not all punctuation instead (the unit the rule's own word count uses); the default stays
datatrove's so that decisions are equal, and configs/curation/english_web.yaml chooses words.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

from data_pipelines.curate.document import Document
from data_pipelines.curate import en_words
from data_pipelines.curate.stage import Filter, check_fraction, check_order, check_positive
from data_pipelines.curate.stats import StageStats

BULLETS = ("•", "-")
# a word made only of these is a symbol, not a word, for the word count and mean length:
# ASCII and CJK punctuation, dashes, quotes, a few arrows and rules, C0/C1 controls
SYMBOL_CHARS = frozenset(string.punctuation + "—–”“’´«»„…►━、，。！？：；（）【】「」《》〈〉％＄～．∶"
                         + "".join(map(chr, [*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)]))
                         ) | en_words.SENTENCE_END_CHARS


@dataclass
class GopherQualityParams:
    """Gopher quality rules; defaults from Rae et al. 2021 (Gopher), Appendix A.1.1."""

    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1  # "#" per word, and "..."/"…" per word
    max_bullet_lines_ratio: float | None = 0.9  # lines starting with a bullet
    max_ellipsis_lines_ratio: float | None = 0.3  # lines ending with an ellipsis
    min_alpha_words_ratio: float | None = 0.8  # words containing a letter
    # of what the letter share is taken: every token, punctuation tokens too (datatrove), or
    # the words that are not all punctuation, the unit of the word count (see the module doc)
    alpha_ratio_of: Literal["tokens", "words"] = "tokens"
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
        self.stop = frozenset(params.stop_words)  # case kept: "The" is not "the"

    def process(self, doc: Document, stats: StageStats) -> str | None:
        p, text = self.p, doc.text
        toks = en_words.words(text)
        bare = [w for w in toks if not SYMBOL_CHARS.issuperset(w)]
        n = len(bare)
        stats.value("words", n)
        if p.min_words is not None and n < p.min_words:
            return "too_few_words"
        if p.max_words is not None and n > p.max_words:
            return "too_many_words"
        if not bare:
            return "empty"
        mean_len = sum(map(len, bare)) / n
        stats.value("mean_word_length", mean_len)
        if p.min_mean_word_length is not None and mean_len < p.min_mean_word_length:
            return "mean_word_length_low"
        if p.max_mean_word_length is not None and mean_len > p.max_mean_word_length:
            return "mean_word_length_high"
        if p.max_symbol_word_ratio is not None:
            # "...." holds one "...", as str.count sees it
            for symbols in (text.count("#"), text.count("...") + text.count("…")):
                if symbols / len(toks) > p.max_symbol_word_ratio:
                    return "symbol_word_ratio"
        lines = text.splitlines()
        bullet = sum(1 for ln in lines if ln.lstrip().startswith(BULLETS)) / len(lines)
        ellipsis = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…"))) / len(lines)
        if p.max_bullet_lines_ratio is not None and bullet > p.max_bullet_lines_ratio:
            return "bullet_lines"
        if p.max_ellipsis_lines_ratio is not None and ellipsis > p.max_ellipsis_lines_ratio:
            return "ellipsis_lines"
        counted = toks if p.alpha_ratio_of == "tokens" else bare
        alpha = sum(1 for w in counted if any(c.isalpha() for c in w)) / len(counted)
        stats.value("alpha_words_ratio", alpha)
        if p.min_alpha_words_ratio is not None and alpha < p.min_alpha_words_ratio:
            return "alpha_words_ratio"
        if p.min_stop_words and len(self.stop.intersection(toks)) < p.min_stop_words:
            return "stop_words"
        return None
