"""Reward-model filtering: keep the records whose reply a reward model scores highest.

The reward is the scalar head's output at the last token of prompt + reply rendered with the
chat template (the reply's end-of-turn marker), exactly where `task: rm` training reads it.
A conversation longer than model.max_seq_len is not scored (cutting it would move the token
the reward is read at) and is never selected; the summary counts them.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.select.io import Pool, Selection, top_n
from data_pipelines.select.lm import ScoringModel
from maxlm.errors import MaxlmError


def select_rm(pool: Pool, rm: ScoringModel, n: int, highest: bool = True) -> Selection:
    """Returns the n records of highest (or lowest) reward."""
    if not rm.scorer.model.config.model.scalar_head:
        raise MaxlmError(f"{rm.name}: not a reward model (no scalar head); train one with task: rm")
    encoded = [rm.encode_reply(r.prompt, r.response) for r in pool.records]
    too_long = np.asarray([len(x) > rm.max_len for x, _ in encoded], bool)
    reward = np.full(len(pool), np.nan)
    fits = np.flatnonzero(~too_long)
    reward[fits] = rm.scorer.rewards([encoded[i][0] for i in fits], [encoded[i][1] for i in fits])
    fields = {"score": reward, "tokens": np.asarray([len(x) for x, _ in encoded], np.int64)}
    summary = {"model": rm.name, "chat_template": rm.template, "order": "highest" if highest else "lowest",
               "too_long": int(too_long.sum())}
    return Selection(top_n(reward, n, highest), fields, summary)
