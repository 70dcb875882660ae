"""Gopher repetition rules (Rae et al. 2021): repeated paragraphs and lines, top n-grams, duplicated n-grams.

Each statistic is the one datatrove's GopherRepetitionFilter computes, so decisions equal its
decisions (tests/data_pipelines/curate/test_datatrove_parity.py):
- every fraction of characters is taken of the whole text, len(text);
- paragraphs are split at runs of two or more newlines, lines at runs of newlines, both unstripped;
- words are en_words.words(text): spaCy's English tokens, case kept, punctuation tokens included;
- "the most frequent n-gram" takes the first to occur among equally frequent ones, even when it
  occurs once, its characters counted with the spaces between its words;
- duplicated n-gram characters are counted by one left-to-right walk: an n-gram seen before adds
  its word characters and the walk jumps past it, so overlapping repeats count once ("we ensure
  that characters that appear in overlapping n-grams are not counted more than once", Gopher A.1.1).
Deliberate difference: an n-gram is a sequence of words, hashed; datatrove compares its words
glued together without a separator (so "ab"+"c" equals "a"+"bc"), which a hash of words never does.
N-gram hashes come from numpy arrays of word hashes: one vectorised pass per n.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import re

import numpy as np

from data_pipelines.curate.document import Document
from data_pipelines.curate import en_words
from data_pipelines.curate.stage import Filter, check_fraction
from data_pipelines.curate.stats import StageStats

# odd 64-bit multipliers combining word hashes into an n-gram hash (wrapping uint64 arithmetic)
_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                  0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
                  0x2545F4914F6CDD1D, 0x8CB92BA72F3D8DD7], dtype=np.uint64)


@dataclass
class GopherRepetitionParams:
    """Thresholds from Rae et al. 2021 (Gopher), Table A1; a document above any one is removed."""

    max_dup_line_frac: float | None = 0.30  # share of lines that repeat an earlier line (0 or null: off)
    max_dup_para_frac: float | None = 0.30
    max_dup_line_char_frac: float | None = 0.20  # share of characters in repeated lines
    max_dup_para_char_frac: float | None = 0.20
    # n -> max share of the text's characters in the most frequent n-gram's occurrences
    max_top_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    # n -> max share of the text's characters in n-grams that occurred earlier in the document
    max_dup_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    def __post_init__(self):
        for k in ("max_dup_line_frac", "max_dup_para_frac", "max_dup_line_char_frac", "max_dup_para_char_frac"):
            check_fraction(k, getattr(self, k))
        for k in ("max_top_ngram_char_frac", "max_dup_ngram_char_frac"):
            for n, v in getattr(self, k).items():
                if not 1 <= n <= len(_MULT):
                    raise ValueError(f"{k}: n-gram size must be in 1..{len(_MULT)}, got {n}")
                check_fraction(k, v)


PARAGRAPH_BREAK_RE = re.compile(r"\n{2,}")
LINE_BREAK_RE = re.compile(r"\n+")


def _dup_counts(units: list[str]) -> tuple[int, int]:
    """Returns (units repeating an earlier one, characters in those repeats)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for u in units:
        if u in seen:
            dup += 1
            dup_chars += len(u)
        else:
            seen.add(u)
    return dup, dup_chars


def ngram_hashes(word_ids: np.ndarray, n: int) -> np.ndarray:
    """Returns the hash of every n-gram: word_ids [L] uint64 -> [L - n + 1] uint64."""
    length = len(word_ids) - n + 1
    h = word_ids[:length] * _MULT[0]
    for j in range(1, n):
        h += word_ids[j:j + length] * _MULT[j]
    return h


def top_ngram_chars(h: np.ndarray, span_chars: np.ndarray) -> int:
    """Returns the characters of all occurrences of the most frequent n-gram (the earliest among ties)."""
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    top = counts.max()
    earliest = first[counts == top].min()
    return int(span_chars[earliest]) * int(top)


def dup_ngram_chars(h: np.ndarray, n: int, word_chars: np.ndarray) -> int:
    """Returns the word characters of the n-grams met again in a left-to-right walk that jumps past each."""
    seen: set[int] = set()
    hs = h.tolist()
    total, i = 0, 0
    while i < len(hs):
        if hs[i] in seen:
            total += int(word_chars[i])
            i += n
        else:
            seen.add(hs[i])
            i += 1
    return total


class GopherRepetition(Filter):
    """Removes documents dominated by repeated lines, paragraphs or n-grams."""

    name = "gopher_repetition"
    Params = GopherRepetitionParams

    def process(self, doc: Document, stats: StageStats) -> str | None:
        p, text = self.p, doc.text
        if not text:
            return "empty"
        size = len(text)
        paras = PARAGRAPH_BREAK_RE.split(text.strip())
        dup, dup_chars = _dup_counts(paras)
        if p.max_dup_para_frac and dup / len(paras) > p.max_dup_para_frac:
            return "dup_para_frac"
        if p.max_dup_para_char_frac and dup_chars / size > p.max_dup_para_char_frac:
            return "dup_para_char_frac"
        lines = LINE_BREAK_RE.split(text)
        dup, dup_chars = _dup_counts(lines)
        stats.value("dup_line_frac", dup / len(lines))
        if p.max_dup_line_frac and dup / len(lines) > p.max_dup_line_frac:
            return "dup_line_frac"
        if p.max_dup_line_char_frac and dup_chars / size > p.max_dup_line_char_frac:
            return "dup_line_char_frac"
        return self._ngram_reason(en_words.words(text), size, stats)

    def _ngram_reason(self, words: list[str], size: int, stats: StageStats) -> str | None:
        """Returns the first n-gram rule that `words` fail, or None."""
        if not words:
            return None
        # Python's str hash is stable within a process, which is all a per-document count needs
        ids = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        csum = np.concatenate(([0], np.cumsum(lens)))
        for n, limit in self.p.max_top_ngram_char_frac.items():
            if len(words) < n:
                continue
            # the n-gram's words with the n - 1 spaces between them
            frac = top_ngram_chars(ngram_hashes(ids, n), csum[n:] - csum[:-n] + n - 1) / size
            if n == 2:
                stats.value("top_2gram_char_frac", frac)
            if frac > limit:
                return f"top_{n}gram_char_frac"
        for n, limit in self.p.max_dup_ngram_char_frac.items():
            if len(words) < n:
                continue
            frac = dup_ngram_chars(ngram_hashes(ids, n), n, csum[n:] - csum[:-n]) / size
            if n == 5:
                stats.value("dup_5gram_char_frac", frac)
            if frac > limit:
                return f"dup_{n}gram_char_frac"
        return None
