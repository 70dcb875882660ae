"""Split text into the unit the dedup stages compare: normalised words.

The rule filters count words, lines and sentences as datatrove does: see en_words.py.
"""

from __future__ import annotations

import re

# Unicode-aware: a "word" for n-gram and dedup purposes is a run of letters, digits or "_"
WORD_RE = re.compile(r"\w+")


def norm_words(text: str) -> list[str]:
    """Returns the lowercased \\w+ words of `text`: the unit of dedup shingles."""
    return WORD_RE.findall(text.lower())
