"""Disagreement selection: records on which several models disagree most, and the folds to train them on.

Each model scores every reply by its mean log-prob per token given the prompt (each with its
own tokenizer and chat template); a record's score is the spread of those means across the
models, their standard deviation (population, ddof 0). Models trained on different
cross-validation folds of the pool (`write_folds`, then `maxlm train` on each `train_i.jsonl`)
disagree where the data is thin: query-by-committee (Seung et al. 1992) with the committee
drawn from the data itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maxlm.files.atomic import write_json
from data_pipelines.select.io import Pool, Selection, top_n, write_jsonl
from maxlm.infer.replies import ScoringModel
from maxlm.errors import MaxlmError


def select_disagreement(pool: Pool, models: list[ScoringModel], n: int, highest: bool = True) -> Selection:
    """Returns the n records with the largest (or smallest) spread of the models' mean reply log-probs."""
    if len(models) < 2:
        raise MaxlmError(f"disagreement needs at least 2 models (--model A --model B ...), got {len(models)}")
    prompts, replies = [r.prompt for r in pool.records], [r.response for r in pool.records]
    means, truncated = [], np.zeros(len(pool), bool)
    for lm in models:
        total, count, cut = lm.reply_logprobs(prompts, replies)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
        truncated |= cut
    means_NxM = np.stack(means, axis=1)
    spread_N = np.std(means_NxM, axis=1)  # NaN when any model could not score the reply
    fields = {"score": spread_N, "mean_logprobs": means_NxM, "truncated": truncated}
    summary = {"models": [m.name for m in models], "order": "highest" if highest else "lowest",
               "truncated": int(truncated.sum()), "unscored": int(np.isnan(spread_N).sum())}
    return Selection(top_n(spread_N, n, highest), fields, summary)


def write_folds(pool: Pool, k: int, out_dir: str | os.PathLike, seed: int = 0) -> dict:
    """Writes train_i.jsonl / heldout_i.jsonl for i < k (a shuffled k-way split) and folds.json; returns the latter."""
    n = len(pool)
    if not 2 <= k <= n:
        raise MaxlmError(f"--k must be between 2 and the pool size {n}, got {k}")
    out = Path(out_dir)
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(perm, k)
    summary = {"input": pool.path, "k": k, "seed": seed, "pool": n, "ids_assigned": pool.ids_assigned, "folds": []}
    for i, held in enumerate(parts):
        held_set = set(held.tolist())
        train_idx = [j for j in range(n) if j not in held_set]  # file order, so folds diff cleanly
        write_jsonl(out / f"train_{i}.jsonl", [pool.records[j].raw for j in train_idx])
        write_jsonl(out / f"heldout_{i}.jsonl", [pool.records[j].raw for j in sorted(held_set)])
        summary["folds"].append({"train": len(train_idx), "heldout": len(held)})
    write_json(out / "folds.json", summary)
    return summary
