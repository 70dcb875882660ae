"""The one batched generation: prompt ids through the sampler, each row cut at its first stop and decoded.

More prompts than `batch_size` rows: continuous batching (`maxlm.infer.slots`), where a
finished row's slot takes the next prompt. Else one batch (`maxlm.infer.sampler`; several
processes always take this path, `batch_size` rows a batch, a short last batch filled with
copies of its last prompt). Every prompt is left-padded to max(prompt_len, the longest
prompt), so the sampler compiles once per call. Used by `maxlm generate`, the exact-match and
win-rate evals, synth (self-instruct, constitutional), the end-of-run samples and RL rollouts.
Letters: N prompts, T padded prompt length, M new tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from maxlm.config import ModelConfig
from maxlm.data.tokenizers import Tokenizer
from maxlm.infer import sampler, slots

Seed = int | Callable[[list[list[int]]], int]  # one seed for every batch, or a batch's seed from its (filled) prompts


@dataclasses.dataclass(frozen=True)
class Generation:
    """A batched generation, one entry per prompt in order."""

    rows_NxTM: np.ndarray  # int32 [N, T + M]: the left-padded prompt, then the sampler's M new tokens
    prompt_len: int  # T
    ids: list[list[int]]  # each row's new tokens before its first stop id
    texts: list[str]  # `ids` decoded
    stopped: list[bool]  # a stop id ended the row (False: it ran out of new tokens)
    logp_NxM: np.ndarray  # f32 [N, M]: each new token's log-prob under the distribution the sampler drew it from (0 after the stop)


def until_stop(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """Returns the ids before the first stop id (all of them when none occurs)."""
    ids = [int(t) for t in ids]
    return ids[: min([ids.index(t) for t in stops if t in ids], default=len(ids))]


def generate_batched(
    graphdef: nnx.GraphDef,
    model_cfg: ModelConfig,
    params: Any,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
    batch_size: int | None = None,
    prompt_len: int = 0,
    seed: Seed = 0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    group: int = 1,
) -> Generation:
    """Returns the Generation of `prompts` (token ids), `batch_size` rows a batch (None: all in one batch).

    Call it under the params' mesh. Greedy rows do not depend on the batching: a prompt gives
    what it gives alone. `group` > 1: the prompts come in runs of `group` copies of one prompt
    (an RL group), each prefilled once.
    """
    if not prompts:
        raise ValueError("no prompts to generate from")
    prompts = [[int(t) for t in p] for p in prompts]
    t = max(prompt_len, max(map(len, prompts)))
    rows = batch_size or len(prompts)
    kw = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop_ids=stop_ids, pad_id=tokenizer.pad_id, pad_to=t)
    if rows < len(prompts) and jax.process_count() == 1:
        rows_NxTM, logp_NxM = slots.stream(graphdef, model_cfg, params, prompts, max_new_tokens, rows=rows,
                                           seed=seed(prompts) if callable(seed) else seed, **kw)
    else:
        # A batch (and its filler copies of its last prompt) holds whole groups only when both counts are multiples.
        group = group if rows % group == 0 and len(prompts) % group == 0 else 1
        parts, logps = [], []
        for start in range(0, len(prompts), rows):
            part = prompts[start : start + rows]
            batch = part + [part[-1]] * (rows - len(part))
            out, logp = sampler.sample(graphdef, model_cfg, params, batch, max_new_tokens, seed=seed(batch) if callable(seed) else seed,
                                       group=group, **kw)
            parts.append(out[: len(part)])
            logps.append(logp[: len(part)])
        rows_NxTM, logp_NxM = np.concatenate(parts), np.concatenate(logps)
    ids = [until_stop(row, stop_ids) for row in rows_NxTM[:, t:]]
    # A row without a stop keeps all M tokens: it stopped exactly when it is shorter.
    stopped = [len(x) < max_new_tokens for x in ids]
    return Generation(rows_NxTM, t, ids, [tokenizer.decode(x) for x in ids], stopped, logp_NxM)
