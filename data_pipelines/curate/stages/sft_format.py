"""Format checks for instruction (SFT) records: {"prompt","response"} or {"instruction","input","output"}."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipelines.curate.document import Document
from data_pipelines.curate.stage import Filter, check_order, check_positive
from data_pipelines.curate.stats import StageStats


def sft_parts(doc: Document) -> tuple[str | None, str | None, str]:
    """Returns (prompt, response, problem) of an SFT record in either schema; problem "" when well-formed."""
    has_prompt = doc.text_key == "prompt" or "prompt" in doc.meta
    p_key, r_key = ("prompt", "response") if has_prompt else ("instruction", "output")
    prompt = doc.text if doc.text_key == p_key else doc.meta.get(p_key)
    response = doc.meta.get(r_key)
    if prompt is None:
        return None, None, "missing_prompt"
    if response is None:
        return None, None, f"missing_{r_key}"
    if not isinstance(prompt, str) or not isinstance(response, str):
        return None, None, "not_a_string"
    if not has_prompt:
        extra = doc.meta.get("input", "")
        if not isinstance(extra, str):
            return None, None, "not_a_string"
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
    return prompt, response, ""


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
        p = self.p
        prompt, response, problem = sft_parts(doc)
        if problem:
            return problem
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
