"""Reward-model accuracy: how often a scalar-head model scores the chosen reply above the rejected."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.data.examples import encode_file
from maxlm.data.tokenizers import load_tokenizer
from maxlm.errors import MaxlmError
from maxlm.pretrained import Pretrained
from maxlm.train.objectives import pair_rewards


def rm_accuracy(model: Pretrained, path: str, rows: str = "", batch_size: int = 16, seq_len: int | None = None) -> dict:
    """Returns {"accuracy", "n", "skipped", "margin"} of the reward model on the preference pairs in `path`.

    Pairs are read like `task: rm` training data (pairs, ranked lists, hh-rlhf dialogues) with the
    model's chat template; pairs too long for `seq_len` (default: the run's data.seq_len) are
    skipped and counted. Ties count as wrong.
    """
    if not model.config.model.scalar_head:
        raise MaxlmError("eval rm: this model has no scalar head; train it with task: rm")
    if not model.tokenizer:
        raise MaxlmError("eval rm: this model has no tokenizer files")
    tokenizer = load_tokenizer(model.tokenizer)
    seq_len = seq_len or model.config.data.seq_len
    examples = encode_file(path, "rm", tokenizer, model.config.data.chat_template, seq_len, "skip", rows)
    graphdef = model.graphdef
    score = jax.jit(lambda params, batch: pair_rewards(graphdef, params, batch))
    diffs = []
    with jax.set_mesh(model.mesh):
        for start in range(0, len(examples), batch_size):
            items = [examples[i] for i in range(start, min(start + batch_size, len(examples)))]
            # Pad the last batch to the same shape (one compile); padded pairs are dropped below.
            items += [items[-1]] * (batch_size - len(items))
            batch = {k: jnp.asarray(np.stack([it[k] for it in items])) for k in ("tokens", "segment_ids", "positions", "loss_mask")}
            r = np.asarray(score(model.params, batch))
            diffs.extend((r[:, 0] - r[:, 1])[: len(examples) - start])
    diffs = np.asarray(diffs)
    return {"accuracy": float(np.mean(diffs > 0)), "n": int(len(diffs)), "skipped": int(examples.skipped), "margin": float(np.mean(diffs))}
