"""Format checks for instruction (SFT) records, read by the adapters `maxlm train` uses
(`maxlm.data.records.normalize`): `messages`, `prompt`/`response`, gsm8k `question`/`answer`,
Alpaca `instruction`/`input`/`output` and hh-rlhf `chosen`/`rejected` (its chosen dialogue),
so a set that trains is a set that curates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter, check_order, check_positive
from data_pipelines.curate.stats import StageStats
from maxlm.data.records import normalize
from maxlm.errors import MaxlmError

_MISSING_KEY = re.compile(r"missing key '(\w+)'")


def sft_parts(doc: Document) -> list[tuple[str, str]] | str:
    """Returns the (prompt, response) texts of an SFT record, one per conversation, or the reason it is not one.

    The prompt is its messages before the reply, joined by blank lines (an Alpaca instruction
    and its input read as `maxlm train` renders them, `instruction\n\ninput`).
    """
    try:
        chats = normalize("sft", doc.to_record(), doc.where)
    except MaxlmError as e:
        return _reason(str(e))
    return [("\n\n".join(m["content"] for m in c.messages[:-1]), c.messages[-1]["content"]) for c in chats]


def _reason(problem: str) -> str:
    """Returns the short removal reason (a report key) for an adapter's message about a record."""
    missing = _MISSING_KEY.search(problem)
    if missing:
        return f"missing_{missing.group(1)}"
    if "expected 'messages', or 'prompt' and 'response'" in problem:
        return "missing_response"
    if "must be a string" in problem:
        return "not_a_string"
    if "empty prompt" in problem:
        return "prompt_too_short"
    if "empty response" in problem:
        return "response_too_short"
    return "malformed"


@dataclass
class SftFormatParams:
    """Limits for instruction records; our defaults (no published standard): generous, catching only broken rows."""

    min_prompt_chars: int = 3
    max_prompt_chars: int | None = 16_000
    min_response_chars: int = 1
    max_response_chars: int | None = 32_000
    reject_echo: bool = True  # response repeats the prompt verbatim
    # lowercased substrings that mark a response as unusable, e.g. "as an ai language model"
    reject_phrases: list[str] = field(default_factory=list)

    def __post_init__(self):
        check_positive("min_prompt_chars", self.min_prompt_chars)
        check_positive("min_response_chars", self.min_response_chars)
        check_order("min_prompt_chars", self.min_prompt_chars, "max_prompt_chars", self.max_prompt_chars)
        check_order("min_response_chars", self.min_response_chars, "max_response_chars", self.max_response_chars)


class SftFormat(Filter):
    """Removes instruction records with missing, non-string, empty, oversized or echoed fields."""

    name = "sft_format"
    Params = SftFormatParams

    def process(self, doc: Document, stats: StageStats) -> str | None:
        parts = sft_parts(doc)
        if isinstance(parts, str):
            return parts
        for prompt, response in parts:
            reason = self._check(prompt, response, stats)
            if reason:
                return reason
        return None

    def _check(self, prompt: str, response: str, stats: StageStats) -> str | None:
        """Returns why one (prompt, response) is removed, or None."""
        p = self.p
        pl, rl = len(prompt.strip()), len(response.strip())
        stats.value("prompt_chars", pl)
        stats.value("response_chars", rl)
        if pl < p.min_prompt_chars:
            return "prompt_too_short"
        if p.max_prompt_chars is not None and pl > p.max_prompt_chars:
            return "prompt_too_long"
        if rl < p.min_response_chars:
            return "response_too_short"
        if p.max_response_chars is not None and rl > p.max_response_chars:
            return "response_too_long"
        if p.reject_echo and response.strip() == prompt.strip():
            return "echo"
        if p.reject_phrases:
            low = response.lower()
            if any(ph in low for ph in p.reject_phrases):
                return "rejected_phrase"
        return None
