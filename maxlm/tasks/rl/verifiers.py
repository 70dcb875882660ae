"""Named verifier rewards for PPO/GRPO: plain Python, (completion, answer) strings in, float out.

A ppo/grpo config names one in VERIFIERS; `answer` is the record's "answer" field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from maxlm.data.records import GSM8K_FINAL_MARK, gsm8k_final_answer
from maxlm.errors import MaxlmError

# A number as written in text: optional sign and "$", thousands commas only in groups of three
# (so "1,2,3" reads as three numbers, not 123), optional decimals; a sentence's final "." is not
# a decimal point because a digit must follow it. A "-" right after a word ("5-3", "COVID-19") is
# a hyphen or an operator, not a sign.
_NUMBER = re.compile(r"(?<![\w.])(-?)\$?(-?)(\d{1,3}(?:,\d{3})+(?!\d)|\d+)(\.\d+)?")
FORMAT_REWARD = 0.1


def _numbers(text: str) -> list[Decimal]:
    """Returns every number in text, in order, as exact Decimals ("$1,200." -> 1200)."""
    out = []
    for m in _NUMBER.finditer(text):
        sign = "-" if (m.group(1) or m.group(2)) else ""
        out.append(Decimal(sign + m.group(3).replace(",", "") + (m.group(4) or "")))
    return out


def _parse_answer(answer: str) -> Decimal | None:
    """Returns the gold answer as a Decimal: the text after the last "####" if present, else the whole string."""
    text = gsm8k_final_answer(answer) if GSM8K_FINAL_MARK in answer else answer.strip().replace(",", "")  # the records' own rule
    text = text.replace("$", "").rstrip(".")
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def gsm8k_final_number(completion: str) -> Decimal | None:
    """Returns the completion's final answer: the first number after its last "####", else its last number."""
    if GSM8K_FINAL_MARK in completion:
        after = _numbers(completion.rsplit(GSM8K_FINAL_MARK, 1)[1])
        if after:
            return after[0]
    found = _numbers(completion)
    return found[-1] if found else None


def gsm8k_exact(completion: str, answer: str) -> float:
    """Returns 1.0 if the completion's final number equals the gold answer numerically, else 0.0.

    answer: the gold number ("1,200") or a whole GSM8K solution ending in "#### 1200".
    """
    gold, got = _parse_answer(answer), gsm8k_final_number(completion)
    return float(gold is not None and got is not None and got == gold)


def format_reward(completion: str, answer: str) -> float:
    """Returns FORMAT_REWARD if the completion states a final answer as "#### <number>", else 0.0.

    Ignores the answer's value: it only rewards the form, so that exact-match rewards can be parsed.
    """
    del answer
    if GSM8K_FINAL_MARK not in completion:
        return 0.0
    return FORMAT_REWARD if re.match(r"\s*" + _NUMBER.pattern, completion.rsplit(GSM8K_FINAL_MARK, 1)[1]) else 0.0


def arithmetic_exact(completion: str, answer: str) -> float:
    """Returns 1.0 if the first number in the completion equals the answer numerically, else 0.0."""
    gold, found = _parse_answer(answer), _numbers(completion)
    return float(gold is not None and bool(found) and found[0] == gold)


def sort_exact(completion: str, answer: str) -> float:
    """Returns 1.0 if the completion's whitespace-separated items are the answer's, in order, else 0.0.

    Strict on purpose: a reply with an item too many or too few ("1 3 7 9 9") is wrong.
    """
    return float(completion.split() == answer.split())


VERIFIERS: dict[str, Callable[[str, str], float]] = {
    "gsm8k_exact": gsm8k_exact,
    "format": format_reward,
    "arithmetic_exact": arithmetic_exact,
    "sort_exact": sort_exact,
}


def verifier(name: str) -> Callable[[str, str], float]:
    """Returns the verifier registered as name; MaxlmError naming the valid ones otherwise."""
    if name not in VERIFIERS:
        raise MaxlmError(f"unknown verifier {name!r}; valid verifiers: {', '.join(sorted(VERIFIERS))}")
    return VERIFIERS[name]
