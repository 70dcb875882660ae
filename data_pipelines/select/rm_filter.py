"""Reward-model filtering: keep the records whose reply a reward model scores highest.

The reward is the scalar head's output at the last token of prompt + reply rendered with the
chat template (the reply's end-of-turn marker), exactly where `task: rm` training reads it.
A conversation longer than model.max_seq_len has its prompt cut from the left, as reward training
reads pairs (data.pair_truncation=left), the reply kept whole; the summary counts them
(`truncated`). One whose reply alone does not fit is not scored and never selected (`too_long`).
"""

from __future__ import annotations

from data_pipelines.select.io import Pool, Selection, top_n
from maxlm.infer.replies import ScoringModel


def select_rm(pool: Pool, rm: ScoringModel, n: int, highest: bool = True) -> Selection:
    """Returns the n records of highest (or lowest) reward."""
    reward, tokens, truncated = rm.reply_rewards([r.prompt for r in pool.records], [r.response for r in pool.records])
    summary = {"model": rm.name, "chat_template": rm.template, "order": "highest" if highest else "lowest",
               "truncated": int(truncated.sum()), "too_long": int((tokens > rm.max_len).sum())}
    fields = {"score": reward, "tokens": tokens}
    return Selection(top_n(reward, n, highest), fields, summary)
