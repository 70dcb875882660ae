"""The C4 rules (Raffel et al. 2020): lines that end in punctuation, boilerplate phrases, word and sentence counts.

Thresholds are the published ones; every rule can be changed, and set to null to switch it off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from data_pipelines.curate.document import Document
from data_pipelines.curate.segment import C4_TERMINAL_PUNCT, count_sentences
from data_pipelines.curate.stage import Filter, check_positive
from data_pipelines.curate.stats import StageStats


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
