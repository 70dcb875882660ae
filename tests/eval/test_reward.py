"""`maxlm eval rm` scores every pair: a pair longer than the context has its prompt cut from the
left and both replies whole, and is counted; a pair that fits scores as it always did."""

from __future__ import annotations

import numpy as np
import pytest

from maxlm.data import chat
from maxlm.eval.reward import rm_accuracy
from maxlm.infer.scoring import Scorer

SEQ_LEN = 128  # the fixture reward model's context and data.seq_len
LONG = "The textwrap module wraps and fills paragraphs of text, one line at a time. " * 12


def user(text):
    return {"role": "user", "content": text}


SHORT = {"prompt": "Wrap this paragraph.", "chosen": "Here it is, wrapped to width 70.", "rejected": "No."}
# The long assistant turn must go, and the user turn before it with it: the prompt is its last turn.
LONG_PROMPT = {"prompt": [user("Hi."), {"role": "assistant", "content": LONG}, user("Wrap this paragraph.")],
               "chosen": "Here it is, wrapped to width 70.", "rejected": "I will not."}
LONG_REPLY = {"prompt": "Wrap this paragraph.", "chosen": LONG, "rejected": "No."}


def expected_margin(rm, prompt, chosen: str, rejected: str) -> float:
    """Returns reward(chosen) - reward(rejected) of prompt + reply rendered and cut to SEQ_LEN here, scored directly."""
    rows = [chat.encode_completion(rm.tokenizer, rm.template, prompt, reply) for reply in (chosen, rejected)]
    r = Scorer(rm).rewards([ids[:SEQ_LEN] for ids, _ in rows], [mask[:SEQ_LEN] for _, mask in rows])
    return float(r[0] - r[1])


def test_every_pair_is_scored_and_the_cut_ones_are_counted(models, write_jsonl):
    rm = models["rm"]
    for record in (LONG_PROMPT, LONG_REPLY):  # the fixtures really are over the context
        assert len(chat.encode_completion(rm.tokenizer, rm.template, record["prompt"], record["chosen"])[0]) > SEQ_LEN
    out = rm_accuracy(rm, write_jsonl("pairs.jsonl", [SHORT, LONG_PROMPT, LONG_REPLY]))
    assert out["n"] == 3 and out["truncated"] == 2 and out["replies_cut"] == 1 and out["skipped"] == 0
    margins = [rm_accuracy(rm, write_jsonl(f"pair{i}.jsonl", [r]))["margin"] for i, r in enumerate((SHORT, LONG_PROMPT, LONG_REPLY))]
    assert out["margin"] == pytest.approx(np.mean(margins), rel=1e-5)
    # A pair that fits: the untouched conversation, as before truncation existed.
    assert margins[0] == pytest.approx(expected_margin(rm, SHORT["prompt"], SHORT["chosen"], SHORT["rejected"]), rel=1e-5, abs=1e-6)
    # A long prompt: the earliest turns are gone, the replies whole after the last user turn.
    want = expected_margin(rm, [user("Wrap this paragraph.")], LONG_PROMPT["chosen"], LONG_PROMPT["rejected"])
    assert margins[1] == pytest.approx(want, rel=1e-5, abs=1e-6)
    # A reply that alone is too long: an empty user turn before it, and its end cut at the context.
    assert margins[2] == pytest.approx(expected_margin(rm, [user("")], LONG, "No."), rel=1e-5, abs=1e-6)
    assert len({round(m, 5) for m in margins}) == 3  # the rewards vary, so the comparisons can fail
