"""Reward-model accuracy: how often a scalar-head model scores the chosen reply above the rejected."""

from __future__ import annotations

import numpy as np

from maxlm.data.examples import encode_file
from maxlm.errors import MaxlmError
from maxlm.infer.scoring import Scorer
from maxlm.infer.pretrained import Pretrained
from maxlm.tasks import require_reward_model


def rm_accuracy(model: Pretrained, path: str, rows: str = "", batch_size: int = 16, seq_len: int | None = None) -> dict:
    """Returns {"accuracy", "n", "truncated", "replies_cut", "skipped", "margin"} of the reward model on the pairs in `path`.

    Pairs are read like `task: rm` training data (pairs, ranked lists, hh-rlhf dialogues) with the
    model's chat template and data.pair_truncation=left: every pair is scored, one longer than
    `seq_len` (default: the run's data.seq_len) with its prompt cut from the left and both replies
    whole (`truncated` counts them; `replies_cut` counts those whose reply alone was too long and
    lost its end as well). `skipped` counts only malformed records. Ties count as wrong. Rewards are
    read as training reads them (the one scorer, `Scorer.rewards`: rm.pooling over each reply),
    about `batch_size` pairs a batch.
    """
    require_reward_model(model.config, "eval rm")
    if batch_size < 1:
        raise MaxlmError(f"eval rm: --batch-size must be >= 1, got {batch_size}")
    tokenizer = model.tokenizer
    seq_len = seq_len or model.config.data.seq_len
    if seq_len > model.config.model.max_seq_len:
        raise MaxlmError(f"eval rm: --seq-len {seq_len} exceeds the model's model.max_seq_len={model.config.model.max_seq_len}")
    examples = encode_file(path, "rm", tokenizer, model.config.data.chat_template, seq_len, "skip", rows, pair_truncation="left")
    # Each example holds chosen (row 0) and rejected (row 1), right-padded; the scorer takes them unpadded.
    lens = [(ex, k, int(np.sum(ex["segment_ids"][k] > 0))) for ex in examples.items for k in (0, 1)]
    ids = [ex["tokens"][k, :n].tolist() for ex, k, n in lens]
    masks = [ex["loss_mask"][k, :n].tolist() for ex, k, n in lens]
    rewards = Scorer(model, batch_tokens=2 * batch_size * seq_len).rewards(ids, masks)
    diffs = rewards[0::2] - rewards[1::2]
    return {
        "accuracy": float(np.mean(diffs > 0)), "n": int(len(diffs)), "truncated": examples.cut["prompt"],
        "replies_cut": examples.cut["replies"], "skipped": int(examples.skipped), "margin": float(np.mean(diffs)),
    }
