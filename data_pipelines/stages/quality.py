"""Heuristic quality filters: Gopher quality rules, C4 rules, FineWeb rules, length limits.

Thresholds are the published ones; every rule can be changed, and set to null to switch it off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from data_pipelines.document import Document
from data_pipelines.segment import C4_TERMINAL_PUNCT, TERMINAL_PUNCT, count_sentences, strip_punct
from data_pipelines.stage import Filter, check_fraction, check_order, check_positive
from data_pipelines.stats import StageStats

# a whitespace token that contains at least one letter (not digit, not underscore)
ALPHA_TOKEN_RE = re.compile(r"(?<!\S)\S*?[^\W\d_]")
BULLETS = ("•", "●", "○", "▪", "▫", "‣", "◦", "⁃", "∙", "·", "-", "–", "*", "➢", "►", "✓")


# ---------------------------------------------------------------- Gopher quality


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


# ---------------------------------------------------------------- C4


@dataclass
class C4Params:
    """C4 rules; defaults from Raffel et al. 2020 (T5), section 2.2, unless noted."""

    filter_no_terminal_punct: bool = True  # drop lines not ending in . ! ? or an end quote
    min_words_per_line: int | None = 3  # drop shorter lines
    min_sentences: int | None = 5  # then remove pages with fewer sentences
    filter_lorem_ipsum: bool = True  # remove pages containing "lorem ipsum"
    filter_curly_bracket: bool = True  # remove pages containing "{" (code, not prose)
    filter_javascript: bool = True  # drop lines mentioning javascript
    filter_policy: bool = True  # drop lines with cookie / terms-of-use boilerplate
    policy_phrases: list[str] = field(
        default_factory=lambda: ["terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies"]
    )
    max_word_length: int | None = 1000  # drop lines with a longer "word" (datatrove C4QualityFilter default)

    def __post_init__(self):
        check_positive("min_words_per_line", self.min_words_per_line)
        check_positive("min_sentences", self.min_sentences)
        check_positive("max_word_length", self.max_word_length, allow_zero=False)


class C4(Filter):
    """Drops boilerplate lines (C4 line rules), then removes pages failing C4's page rules."""

    name = "c4"
    Params = C4Params

    def process(self, doc: Document, stats: StageStats) -> str | None:
        p, text = self.p, doc.text
        low = text.lower()
        if p.filter_lorem_ipsum and "lorem ipsum" in low:
            return "lorem_ipsum"
        if p.filter_curly_bracket and "{" in text:
            return "curly_bracket"
        kept, dropped, sentences = [], 0, 0
        for line in text.split("\n"):
            s = line.strip()
            if not s:
                kept.append("")  # blank lines keep paragraph breaks
                continue
            why = self._line_problem(s)
            if why:
                stats.count(f"lines_dropped:{why}")
                dropped += 1
            else:
                kept.append(line)
                # as in C4's own code, sentences are counted line by line: a kept line is at least one
                sentences += count_sentences(s)
        if dropped:
            new = re.sub(r"\n{3,}", "\n\n", "\n".join(kept).strip("\n"))
            if not new.strip():
                return "no_lines_left"
            doc.text = new
        if p.min_sentences:
            stats.value("sentences", sentences)
            if sentences < p.min_sentences:
                return "too_few_sentences"
        return None

    def _line_problem(self, s: str) -> str | None:
        p = self.p
        if p.filter_no_terminal_punct and not s.endswith(C4_TERMINAL_PUNCT):
            return "no_terminal_punct"
        toks = s.split()
        if p.min_words_per_line is not None and len(toks) < p.min_words_per_line:
            return "too_few_words"
        if p.max_word_length is not None and max(map(len, toks)) > p.max_word_length:
            return "long_word"
        low = s.lower()
        if p.filter_javascript and "javascript" in low:
            return "javascript"
        if p.filter_policy and any(ph in low for ph in p.policy_phrases):
            return "policy"
        return None


# ---------------------------------------------------------------- FineWeb


@dataclass
class FineWebParams:
    """FineWeb's own rules; thresholds from Penedo et al. 2024 (FineWeb), section 3.3."""

    min_line_punct_ratio: float | None = 0.12  # remove if lines ending in punctuation <= this share
    max_short_line_ratio: float | None = 0.67  # remove if lines of <= short_line_length chars >= this share
    short_line_length: int = 30
    max_dup_line_char_ratio: float | None = 0.1  # remove if chars in repeated lines >= this share
    max_newline_word_ratio: float | None = 0.3  # newlines per word (datatrove FineWebQualityFilter default)
    stop_chars: list[str] = field(default_factory=lambda: list(TERMINAL_PUNCT))

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
        lines = [s for s in (ln.strip() for ln in text.split("\n")) if s]
        if not lines:
            return "empty"
        punct = sum(1 for ln in lines if ln.endswith(self.stop_chars)) / len(lines)
        stats.value("line_punct_ratio", punct)
        if p.min_line_punct_ratio is not None and punct <= p.min_line_punct_ratio:
            return "line_punct_ratio"
        short = sum(1 for ln in lines if len(ln) <= p.short_line_length) / len(lines)
        stats.value("short_line_ratio", short)
        if p.max_short_line_ratio is not None and short >= p.max_short_line_ratio:
            return "short_line_ratio"
        if p.max_dup_line_char_ratio is not None:
            seen: set[str] = set()
            dup_chars = 0
            for ln in lines:
                if ln in seen:
                    dup_chars += len(ln)
                else:
                    seen.add(ln)
            ratio = dup_chars / max(1, sum(map(len, lines)))
            stats.value("dup_line_char_ratio", ratio)
            if ratio >= p.max_dup_line_char_ratio:
                return "dup_line_char_ratio"
        if p.max_newline_word_ratio is not None:
            n_words = len(text.split())
            if n_words == 0 or text.count("\n") / n_words > p.max_newline_word_ratio:
                return "newline_word_ratio"
        return None


# ---------------------------------------------------------------- length


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
