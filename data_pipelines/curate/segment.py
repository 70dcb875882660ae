"""Split text into the units the filters count: words, lines, paragraphs, sentences."""

from __future__ import annotations

import re

# Unicode-aware: a "word" for n-gram and dedup purposes is a run of letters, digits or "_"
WORD_RE = re.compile(r"\w+")
PARAGRAPH_RE = re.compile(r"\n\s*\n")
# a sentence ends at . ! ? (or …) optionally followed by closing quotes/brackets, then space or end
SENTENCE_END_RE = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "”", "’", "…", ":", ";")
C4_TERMINAL_PUNCT = (".", "!", "?", '"', "”")  # C4 (Raffel et al. 2020): . ! ? or an end quote
PUNCT_EDGES = "\"'`“”‘’()[]{}<>«».,;:!?…-–—*_/\\|"


def words(text: str) -> list[str]:
    """Returns the whitespace-separated tokens of `text` (punctuation stays attached)."""
    return text.split()


def norm_words(text: str) -> list[str]:
    """Returns the lowercased \\w+ words of `text`: the unit of n-grams and shingles."""
    return WORD_RE.findall(text.lower())


def strip_punct(token: str) -> str:
    """Returns `token` without leading and trailing punctuation."""
    return token.strip(PUNCT_EDGES)


def lines(text: str) -> list[str]:
    """Returns the non-blank lines of `text`, stripped."""
    return [s for s in (ln.strip() for ln in text.split("\n")) if s]


def paragraphs(text: str) -> list[str]:
    """Returns the blank-line separated paragraphs of `text`, stripped, non-empty."""
    return [s for s in (p.strip() for p in PARAGRAPH_RE.split(text)) if s]


def count_sentences(text: str) -> int:
    """Returns the number of sentences: text segments closed by . ! ? or the end of the text."""
    n = 0
    last = 0
    for m in SENTENCE_END_RE.finditer(text):
        if text[last:m.start()].strip():
            n += 1
        last = m.end()
    return n + (1 if text[last:].strip() else 0)
