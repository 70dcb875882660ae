"""Uncertainty selection: the perplexity of each reply, and its instruction-following difficulty (IFD).

perplexity  ppl(reply | prompt) = exp(-mean log p) over the reply's tokens (and its end-of-turn
            marker), the conversation rendered with the model's chat template.
ifd         Li et al. 2024, "From Quantity to Quality": IFD = ppl(reply | prompt) / ppl(reply alone),
            the reply alone being the same reply rendered as a one-message conversation, so the
            very same reply tokens are scored with and without the instruction. A high IFD means
            the instruction helps the model little: a hard, informative example. IFD >= 1 means
            the instruction does not help at all; the paper treats such pairs as misaligned and
            drops them, and so does this (`drop_ifd_over_1=False` keeps them).
Both keep the top N by score, highest first by default (`highest=False`: lowest first).
Replies that do not fit model.max_seq_len are scored on the tokens that fit (IFD: the same
tokens on both sides); a reply with no token inside the window is not scored and not selected.
"""

from __future__ import annotations

import numpy as np

from data_pipelines.select.io import Pool, Selection, top_n
from maxlm.infer.replies import ScoringModel, fit
from maxlm.infer.scoring import perplexity


def select_perplexity(pool: Pool, lm: ScoringModel, n: int, highest: bool = True) -> Selection:
    """Returns the n records whose reply perplexity (given the prompt) is highest (or lowest)."""
    total, count, truncated = lm.reply_logprobs([r.prompt for r in pool.records], [r.response for r in pool.records])
    ppl = perplexity(total, count)
    fields = {"score": ppl, "tokens": count.astype(np.int64), "truncated": truncated}
    summary = {"model": lm.name, "chat_template": lm.template, "order": "highest" if highest else "lowest",
               "truncated": int(truncated.sum()), "unscored": int(np.isnan(ppl).sum())}
    return Selection(top_n(ppl, n, highest), fields, summary)


def ifd_scores(pool: Pool, lm: ScoringModel) -> dict[str, np.ndarray]:
    """Returns {"score" (IFD), "ppl_conditioned", "ppl_alone", "tokens", "truncated"}, each [N]."""
    cond, alone, truncated = [], [], []
    for r in pool.records:
        ids, mask, cut = fit(*lm.encode_reply(r.prompt, r.response), lm.max_len)
        a_ids, a_mask = lm.encode_reply([], r.response)
        a_ids, a_mask = _first_scored(a_ids, a_mask, sum(mask[1:]))  # the reply tokens scored with the prompt
        cond.append((ids, mask))
        alone.append((a_ids, a_mask))
        truncated.append(cut)
    c_sum, c_count = lm.scorer.logprobs([i for i, _ in cond], [m for _, m in cond])
    a_sum, a_count = lm.scorer.logprobs([i for i, _ in alone], [m for _, m in alone])
    ppl_c, ppl_a = perplexity(c_sum, c_count), perplexity(a_sum, a_count)
    with np.errstate(invalid="ignore"):
        ifd = ppl_c / ppl_a
    return {"score": ifd, "ppl_conditioned": ppl_c, "ppl_alone": ppl_a, "tokens": c_count.astype(np.int64),
            "truncated": np.asarray(truncated, bool)}


def select_ifd(pool: Pool, lm: ScoringModel, n: int, highest: bool = True, drop_ifd_over_1: bool = True) -> Selection:
    """Returns the n records of highest (or lowest) IFD; those with IFD >= 1 are left out unless kept."""
    fields = ifd_scores(pool, lm)
    ifd = fields["score"]
    with np.errstate(invalid="ignore"):
        over = ifd >= 1.0
    fields["ifd_over_1"] = over
    order = top_n(ifd, n, highest, ~over if drop_ifd_over_1 else None)
    summary = {"model": lm.name, "chat_template": lm.template, "order": "highest" if highest else "lowest",
               "ifd_over_1": int(over.sum()), "ifd_over_1_dropped": drop_ifd_over_1,
               "truncated": int(fields["truncated"].sum()), "unscored": int(np.isnan(ifd).sum())}
    return Selection(order, fields, summary)


def _first_scored(ids: list[int], mask: list[int], k: int) -> tuple[list[int], list[int]]:
    """Returns (ids, mask) cut right after the k-th scored token (position 0 is never scored)."""
    if k == 0:
        return ids[:1], [0]
    seen = 0
    for t in range(1, len(ids)):
        seen += mask[t]
        if seen == k:
            return ids[: t + 1], mask[: t + 1]
    return ids, mask
