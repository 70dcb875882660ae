"""Gopher repetition rules: repeated lines and paragraphs, top n-grams, duplicated n-grams.

N-gram statistics run on numpy arrays of word hashes, so each n costs one sort, not a
Python loop over n-gram tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_pipelines.curate.document import Document
from data_pipelines.curate.segment import norm_words, paragraphs
from data_pipelines.curate.stage import Filter, check_fraction
from data_pipelines.curate.stats import StageStats

# odd 64-bit multipliers combining word hashes into an n-gram hash (wrapping uint64 arithmetic)
_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                  0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9,
                  0x2545F4914F6CDD1D, 0x8CB92BA72F3D8DD7], dtype=np.uint64)


@dataclass
class GopherRepetitionParams:
    """Thresholds from Rae et al. 2021 (Gopher), Table A1; a document above any one is removed."""

    max_dup_line_frac: float | None = 0.30  # share of lines that repeat an earlier line
    max_dup_para_frac: float | None = 0.30
    max_dup_line_char_frac: float | None = 0.20  # share of characters in repeated lines
    max_dup_para_char_frac: float | None = 0.20
    # n -> max share of word characters covered by the single most frequent n-gram
    max_top_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    # n -> max share of word characters inside n-grams that occur earlier in the document
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


def _dup_fractions(units: list[str], total_chars: int) -> tuple[float, float]:
    """Returns (share of units repeating an earlier one, share of characters in those repeats)."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for u in units:
        if u in seen:
            dup += 1
            dup_chars += len(u)
        else:
            seen.add(u)
    return dup / max(1, len(units)), dup_chars / max(1, total_chars)


def ngram_hashes(word_ids: np.ndarray, n: int) -> np.ndarray:
    """Returns the hash of every n-gram: word_ids [L] uint64 -> [L - n + 1] uint64."""
    length = len(word_ids) - n + 1
    h = word_ids[:length] * _MULT[0]
    for j in range(1, n):
        h += word_ids[j:j + length] * _MULT[j]
    return h


def top_ngram_char_frac(h: np.ndarray, span_chars: np.ndarray, total_chars: int) -> float:
    """Returns the share of word characters taken by all occurrences of the most frequent n-gram."""
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    top = int(counts.max())
    if top < 2:
        return 0.0  # every n-gram is unique: nothing repeats
    # ties in count: the longest of them, so the result does not depend on hash order
    return float(span_chars[first[counts == top]].max()) * top / total_chars


def dup_ngram_char_frac(h: np.ndarray, n: int, word_lens: np.ndarray, total_chars: int) -> float:
    """Returns the share of word characters covered by n-grams that already occurred earlier."""
    order = np.argsort(h, kind="stable")  # stable: within equal hashes, earliest position first
    hs = h[order]
    repeat = np.zeros(len(hs), dtype=bool)
    repeat[1:] = hs[1:] == hs[:-1]  # every occurrence after the first of its n-gram
    starts = order[repeat]
    if len(starts) == 0:
        return 0.0
    # words covered by any repeated occurrence: difference array over [start, start + n)
    cover = np.bincount(starts, minlength=len(word_lens) + 1) - np.bincount(starts + n, minlength=len(word_lens) + 1)
    covered = np.cumsum(cover[: len(word_lens)]) > 0
    return float(word_lens[covered].sum()) / total_chars


class GopherRepetition(Filter):
    """Removes documents dominated by repeated lines, paragraphs or n-grams."""

    name = "gopher_repetition"
    Params = GopherRepetitionParams

    def process(self, doc: Document, stats: StageStats) -> str | None:
        p, text = self.p, doc.text
        lines = [s for s in (ln.strip() for ln in text.split("\n")) if s]
        line_frac, line_char_frac = _dup_fractions(lines, len(text))
        stats.value("dup_line_frac", line_frac)
        if p.max_dup_line_frac is not None and line_frac > p.max_dup_line_frac:
            return "dup_line_frac"
        if p.max_dup_line_char_frac is not None and line_char_frac > p.max_dup_line_char_frac:
            return "dup_line_char_frac"
        paras = paragraphs(text)
        para_frac, para_char_frac = _dup_fractions(paras, len(text))
        if p.max_dup_para_frac is not None and para_frac > p.max_dup_para_frac:
            return "dup_para_frac"
        if p.max_dup_para_char_frac is not None and para_char_frac > p.max_dup_para_char_frac:
            return "dup_para_char_frac"
        words = norm_words(text)
        if not words:
            return None
        # Python's str hash is stable within a process, which is all a per-document count needs
        ids = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        total = int(lens.sum())
        csum = np.concatenate(([0], np.cumsum(lens)))
        for n, limit in sorted(p.max_top_ngram_char_frac.items()):
            if len(words) < n:
                continue
            frac = top_ngram_char_frac(ngram_hashes(ids, n), csum[n:] - csum[:-n], total)
            if n == 2:
                stats.value("top_2gram_char_frac", frac)
            if frac > limit:
                return f"top_{n}gram_char_frac"
        dup_limits = sorted(p.max_dup_ngram_char_frac.items())
        for i, (n, limit) in enumerate(dup_limits):
            if len(words) < n:
                break
            frac = dup_ngram_char_frac(ngram_hashes(ids, n), n, lens, total)
            if n == 5:
                stats.value("dup_5gram_char_frac", frac)
            if frac > limit:
                return f"dup_{n}gram_char_frac"
            # a repeated m-gram contains repeated n-grams for every n < m, so the fraction only
            # falls as n grows: below every remaining limit, the larger n cannot fail
            rest = [lim for _, lim in dup_limits[i + 1:]]
            if not rest or frac <= min(rest):
                break
        return None
