"""Continuous batching: B decode slots over P prompts; when a row stops, the next prompt takes its slot.

One jit, static shapes: each iteration of a while loop either prefills the next prompt into a
free slot (one [1, T] forward) or decodes one token in every slot (one [B, 1] forward), so a
set of prompts whose answers differ widely in length costs about its total tokens, not
batches x the longest answer.

The KV cache is a ring of S = T + N slots per row with one write pointer for all rows: a
prompt enters behind the pointer (slots g - T .. g - 1) and its new tokens follow it, so rows
that started at different times share each decode step. Attention does not care where a key
sits (RoPE is applied with the token's own position when the key is written); only the valid
mask does, and sliding windows measure slot distance modulo S.

Randomness is per prompt and token (the key of prompt p's n-th token folds in p and n), so a
sampled answer does not depend on the number of slots or on which prompts share them; greedy
answers equal the one-batch sampler's (`maxlm.infer.sampler.sample`).
Letters: B slots, P prompts, T prompt length, N new tokens, S = T + N ring slots, V vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maxlm.config import ModelConfig, head_dim
from maxlm.infer.buckets import pow2_ceil
from maxlm.infer.sampler import check_fits, choose, left_pad, prefill
from maxlm.models.layers import DTYPES, KVCache
from maxlm.models.params import bind


def _keys(seed_key, prompt_B, count_B) -> jax.Array:
    """Returns [B] keys: the key of token `count` of prompt `prompt`, whatever slot it is decoded in."""
    return jax.vmap(lambda p, n: jax.random.fold_in(jax.random.fold_in(seed_key, p), n))(prompt_B, count_B)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_spec", "rows", "max_new_tokens", "temperature", "top_k", "top_p"))
def _stream(graphdef, cache_spec, params, tokens_PxT, valid_PxT, count, stop_ids, seed, *, rows, max_new_tokens, temperature, top_k, top_p):
    model = bind(graphdef, params)
    seed_key = jax.random.key(seed)
    (p, t), b, n = tokens_PxT.shape, rows, max_new_tokens
    s = t + n
    slots_S = jnp.arange(s)
    layers, kv_heads, head, dtype = cache_spec
    empty = tuple(KVCache(*(jnp.zeros((b, kv_heads, head, s), DTYPES[dtype]) for _ in range(2))) for _ in range(layers))
    state = {
        "cache": empty, "g": jnp.int32(0), "next_prompt": jnp.int32(0), "valid_BxS": jnp.zeros((b, s), bool),
        "prompt_B": jnp.zeros((b,), jnp.int32), "count_B": jnp.zeros((b,), jnp.int32), "pos_B": jnp.zeros((b,), jnp.int32),
        "last_B": jnp.zeros((b,), jnp.int32), "free_B": jnp.ones((b,), bool),
        "out_PxN": jnp.full((p, n), stop_ids[0], jnp.int32), "logp_PxN": jnp.zeros((p, n), jnp.float32),
    }

    def enter(st, row_K):
        """The next K prompts prefilled (one [K, T] forward) into slots `row_K`, their first tokens chosen."""
        k, q = len(row_K), st["next_prompt"]
        prompt_K = q + jnp.arange(k, dtype=jnp.int32)
        tok_KxT = jax.lax.dynamic_slice_in_dim(tokens_PxT, q, k)
        val_KxT = jax.lax.dynamic_slice_in_dim(valid_PxT, q, k)
        logits_KxV, c = prefill(model, cache_spec, tok_KxT, val_KxT, n, 1)
        # The prompts' slots 0..T-1 move behind the pointer: g - T .. g - 1 (mod S).
        shift = st["g"] - t
        cache = jax.tree.map(lambda full, new: full.at[row_K].set(jnp.roll(new, shift, axis=-1)), st["cache"], c)
        valid_KxS = jnp.roll(jnp.concatenate([val_KxT, jnp.zeros((k, n), bool)], axis=1), shift, axis=1)
        first_K, logp_K = choose(logits_KxV, _keys(seed_key, prompt_K, jnp.zeros((k,), jnp.int32)), temperature, top_k, top_p)
        return st | {
            "cache": cache, "valid_BxS": st["valid_BxS"].at[row_K].set(valid_KxS), "next_prompt": q + k,
            "prompt_B": st["prompt_B"].at[row_K].set(prompt_K), "count_B": st["count_B"].at[row_K].set(1),
            "pos_B": st["pos_B"].at[row_K].set(jnp.sum(val_KxT, axis=1).astype(jnp.int32) - 1),
            "last_B": st["last_B"].at[row_K].set(first_K), "free_B": st["free_B"].at[row_K].set(jnp.isin(first_K, stop_ids) | (n == 1)),
            "out_PxN": st["out_PxN"].at[prompt_K, 0].set(first_K), "logp_PxN": st["logp_PxN"].at[prompt_K, 0].set(logp_K),
        }

    # The first B prompts enter together (one [B, T] prefill, not B single ones); later ones one at a time into a free slot.
    state = enter(state, jnp.arange(b))
    insert = lambda st: enter(st, jnp.argmax(st["free_B"])[None])

    def decode(st):
        active_B, g = ~st["free_B"], st["g"]
        # Every slot writes at g; an idle slot sees only that key (no empty softmax), and its row is ignored.
        valid_BxS = st["valid_BxS"] | ((slots_S == g)[None, :] & active_B[:, None])
        mask_BxS = valid_BxS | (slots_S == g)[None, :]
        pos_B = st["pos_B"] + 1
        h, cache = model.hidden(st["last_B"][:, None], pos_B[:, None], mask_BxS[:, None, :], st["cache"], g)
        nxt_B, logp_B = choose(model.logits(h)[:, 0], _keys(seed_key, st["prompt_B"], st["count_B"]), temperature, top_k, top_p)
        # An idle slot's scatter goes to row P, out of bounds, and is dropped.
        row_B = jnp.where(active_B, st["prompt_B"], p)
        count_B = st["count_B"] + active_B
        stopped_B = jnp.isin(nxt_B, stop_ids) | (count_B == n)
        return st | {
            "cache": cache, "valid_BxS": valid_BxS, "g": (g + 1) % s, "pos_B": jnp.where(active_B, pos_B, st["pos_B"]), "count_B": count_B,
            "last_B": jnp.where(active_B, nxt_B, st["last_B"]), "free_B": st["free_B"] | stopped_B,
            "out_PxN": st["out_PxN"].at[row_B, st["count_B"]].set(nxt_B, mode="drop"),
            "logp_PxN": st["logp_PxN"].at[row_B, st["count_B"]].set(logp_B, mode="drop"),
        }

    def step(st):
        waiting = st["next_prompt"] < count
        return jax.lax.cond(waiting & jnp.any(st["free_B"]), insert, decode, st)

    def unfinished(st):
        return (st["next_prompt"] < count) | ~jnp.all(st["free_B"])

    st = jax.lax.while_loop(unfinished, step, state)
    return st["out_PxN"], st["logp_PxN"]


def stream(
    graphdef: nnx.GraphDef,
    cfg: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    rows: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    seed: int = 0,
    pad_to: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (int32 [P, T + N], f32 [P, N]) as `sample` does for all prompts at once, decoded `rows` slots at a time.

    After a prompt's stop token its remaining slots hold the stop token with log-prob 0, as in
    `sample`. One process only (a multi-process run uses `sample`).
    """
    n = len(prompts)
    rows = min(rows, n)  # every slot starts with a prompt
    # Room for a power of two of prompts, the rest never entered: one compile serves calls of similar size.
    tokens, valid = left_pad(list(prompts) + [prompts[-1]] * (pow2_ceil(n) - n), pad_id, pad_to)
    check_fits(cfg, tokens.shape[1], max_new_tokens)
    stops = np.asarray(list(stop_ids) or [-1], np.int32)
    new, logp = _stream(
        graphdef, (cfg.num_layers, cfg.num_kv_heads, head_dim(cfg), cfg.dtype), params, tokens, valid, np.int32(n), stops, np.uint32(seed),
        rows=int(rows), max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
    )
    return np.concatenate([tokens, np.asarray(new)], axis=1)[:n], np.asarray(logp, np.float32)[:n]

