"""The one sampler: prefill + decode through a preallocated KV cache, in a single jit.

Prompts of different lengths are left-padded; each row's positions count only its real
tokens, so a padded row decodes exactly as it would alone. Shared by `maxlm generate`,
the end-of-run samples, eval and RL rollouts.
Letters: B batch, G distinct prompts of a grouped batch, T prompt length, N new tokens, S = T + N cache slots, V vocab.
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
from maxlm.errors import MaxlmError
from maxlm.models.layers import DTYPES, KVCache
from maxlm.models.params import bind
from maxlm.parallel.mesh import data_parallel_size
from maxlm.parallel.rules import RULES


def filter_logits(logits_BxV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Returns logits with everything outside the top-k and the top-p nucleus set to -inf."""
    logits = logits_BxV.astype(jnp.float32)
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # Keep a token while the mass before it is below top_p (so the top token always stays).
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < top_p, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


def choose(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> tuple[jax.Array, jax.Array]:
    """Returns (the next token [B] int32, its log-prob [B] f32 under the distribution it was drawn from); `key`: one key or [B] keys.

    temperature 0: the argmax, scored by log-softmax of the raw logits; else a sample from
    softmax(filter(logits / temperature)), scored by that same filtered, renormalized softmax.
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    if temperature == 0.0:
        token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
        logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    else:
        filtered_BxV = filter_logits(logits_BxV / temperature, top_k, top_p)
        # One key for the batch, or a key per row ([B] keys: continuous batching's per-token randomness).
        draw = jax.vmap(jax.random.categorical) if key.shape else jax.random.categorical
        token_B = draw(key, filtered_BxV).astype(jnp.int32)
        logp_BxV = jax.nn.log_softmax(filtered_BxV, axis=-1)
    return token_B, jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, pad_to: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (tokens [B, T], valid [B, T]) with each prompt right-aligned; T = max(longest, pad_to)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    t = max(max(len(p) for p in prompts), pad_to)
    tokens = np.full((len(prompts), t), pad_id, np.int32)
    valid = np.zeros((len(prompts), t), bool)
    for i, p in enumerate(prompts):
        tokens[i, t - len(p):] = p
        valid[i, t - len(p):] = True
    return tokens, valid


def prefill(model, cache_spec, tokens_GxT, valid_GxT, max_new_tokens: int, group: int) -> tuple[jax.Array, KVCache]:
    """Returns (the next-token logits [G * group, V], L per-layer caches [G * group, K, H, S]) of G distinct prompts, each row repeated `group` times.

    A prompt is run once and its cache copied to the rows of its group (GRPO samples a group per prompt).
    """
    g, t = tokens_GxT.shape
    s = t + max_new_tokens
    layers, kv_heads, head, dtype = cache_spec
    cache = tuple(KVCache(*(jnp.zeros((g, kv_heads, head, s), DTYPES[dtype]) for _ in range(2))) for _ in range(layers))
    valid_GxS = jnp.concatenate([valid_GxT, jnp.ones((g, max_new_tokens), bool)], axis=1)
    positions_GxT = jnp.maximum(jnp.cumsum(valid_GxT, axis=1) - 1, 0).astype(jnp.int32)
    slots = jnp.arange(s)
    # Causal over slots, padding keys hidden; a query always sees itself (no empty rows).
    mask = (slots[None, :] <= jnp.arange(t)[:, None])[None] & valid_GxS[:, None, :]
    mask = mask | (slots[None, :] == jnp.arange(t)[:, None])[None]
    h, cache = model.hidden(tokens_GxT, positions_GxT, mask, cache, 0)
    logits_GxV = model.logits(h[:, -1:])[:, 0]
    if group == 1:
        return logits_GxV, cache
    return jnp.repeat(logits_GxV, group, axis=0), jax.tree.map(lambda c: jnp.repeat(c, group, axis=0), cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_spec", "max_new_tokens", "temperature", "top_k", "top_p", "group"))
def _generate(graphdef, cache_spec, params, tokens_BxT, valid_BxT, stop_ids, seed, *, max_new_tokens, temperature, top_k, top_p, group):
    model = bind(graphdef, params)
    key = jax.random.key(seed)
    b, t = tokens_BxT.shape
    s = t + max_new_tokens
    logits, cache = prefill(model, cache_spec, tokens_BxT[::group], valid_BxT[::group], max_new_tokens, group)
    valid_BxS = jnp.concatenate([valid_BxT, jnp.ones((b, max_new_tokens), bool)], axis=1)
    positions_BxT = jnp.maximum(jnp.cumsum(valid_BxT, axis=1) - 1, 0).astype(jnp.int32)
    slots = jnp.arange(s)
    key, sub = jax.random.split(key)
    first, first_logp = choose(logits, sub, temperature, top_k, top_p)
    # Slots never reached (every row stopped early) hold the stop token, as a stopped row repeats it.
    out = jnp.full((b, max_new_tokens), stop_ids[0], jnp.int32).at[:, 0].set(first)
    logp_BxN = jnp.zeros((b, max_new_tokens), jnp.float32).at[:, 0].set(first_logp)
    done = jnp.isin(first, stop_ids)
    last_pos = positions_BxT[:, -1]

    def unfinished(carry):
        i, *_, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, out, logp_BxN, cache, done, key = carry
        token = out[:, i - 1]
        slot = t + i - 1
        m = (valid_BxS & (slots <= slot)[None, :])[:, None, :]
        h, cache = model.hidden(token[:, None], (last_pos + i)[:, None], m, cache, slot)
        key, sub = jax.random.split(key)
        nxt, logp = choose(model.logits(h)[:, 0], sub, temperature, top_k, top_p)
        nxt = jnp.where(done, stop_ids[0], nxt)  # finished rows repeat the stop token
        logp = jnp.where(done, 0.0, logp)  # a repeat was not sampled
        done = done | jnp.isin(nxt, stop_ids)
        return i + 1, out.at[:, i].set(nxt), logp_BxN.at[:, i].set(logp), cache, done, key

    # A while loop, not a fixed trip count: decoding ends when every row has stopped.
    _, out, logp_BxN, *_ = jax.lax.while_loop(unfinished, body, (jnp.int32(1), out, logp_BxN, cache, done, key))
    return out, logp_BxN


def sample(
    graphdef: nnx.GraphDef,
    cfg: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]] | np.ndarray,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    seed: int = 0,
    pad_to: int = 0,
    group: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (int32 [B, T + N]: the left-padded prompts followed by N new tokens per row,
    f32 [B, N]: the log-prob of each new token under the distribution it was drawn from).

    The log-probs are those of `choose` (RL's importance ratios start from them); after a row's
    stop token, whose repeats were not sampled, they are 0. `pad_to` left-pads every batch to at
    least that many prompt tokens, so callers with prompts of varying length (RL rollouts, eval)
    compile one shape instead of one per longest prompt. `group` > 1: rows come in runs of
    `group` copies of one prompt, each prefilled once (a ValueError if they do not).
    """
    tokens, valid = left_pad([list(p) for p in np.asarray(prompts).tolist()] if isinstance(prompts, np.ndarray) else prompts, pad_id, pad_to)
    check_fits(cfg, tokens.shape[1], max_new_tokens)
    _check_groups(tokens, valid, group)
    stops = np.asarray(list(stop_ids) or [-1], np.int32)
    args = (tokens, valid, stops, np.uint32(seed))
    if jax.process_count() > 1:
        args, local_rows, filled = _global_inputs(params, *args)
        # The filler rows copy row 0: groups stay aligned only when they make whole groups.
        group = group if filled % group == 0 else 1
    new, logp = _generate(
        graphdef, (cfg.num_layers, cfg.num_kv_heads, head_dim(cfg), cfg.dtype), params, *args,
        max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), group=int(group),
    )
    if jax.process_count() > 1:
        new, logp = local_rows(new), local_rows(logp)
    return np.concatenate([tokens, np.asarray(new)], axis=1), np.asarray(logp, np.float32)


def check_fits(cfg: ModelConfig, prompt_len: int, max_new_tokens: int) -> None:
    """Raises MaxlmError unless `prompt_len` + `max_new_tokens` >= 1 new tokens fit the model's context."""
    if max_new_tokens < 1:
        raise MaxlmError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt_len + max_new_tokens > cfg.max_seq_len:
        raise MaxlmError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds model.max_seq_len ({cfg.max_seq_len}), "
            "the model's context: shorten the prompt or ask for fewer new tokens"
        )


def generate(graphdef: nnx.GraphDef, cfg: ModelConfig, params: Any, prompts: Sequence[Sequence[int]] | np.ndarray, max_new_tokens: int,
             **kw) -> np.ndarray:
    """Returns int32 [B, T + N]: `sample`'s rows without their log-probs (the same compiled sampler)."""
    return sample(graphdef, cfg, params, prompts, max_new_tokens, **kw)[0]


def _check_groups(tokens_BxT: np.ndarray, valid_BxT: np.ndarray, group: int) -> None:
    """Raises ValueError unless the rows are runs of `group` identical prompts."""
    if group < 1 or len(tokens_BxT) % group:
        raise ValueError(f"group={group} must divide the {len(tokens_BxT)} rows")
    for a in (tokens_BxT, valid_BxT):
        runs = a.reshape(-1, group, a.shape[1])
        if not (runs == runs[:, :1]).all():
            raise ValueError(f"group={group}: the rows are not runs of {group} copies of one prompt")


def _global_inputs(params, tokens, valid, stops, seed):
    """Returns (the sampler's inputs as global arrays, a function giving this process's rows of a global result,
    how many filler rows this process added).

    Several processes: each passes its own prompt rows (the same count and padded length in
    every process); the rows of all processes form one batch sharded over the mesh's data axes,
    sampled with one key, so a row's tokens do not depend on how the batch was split.
    """
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.tree.leaves(params)[0].sharding.mesh
    rows, same = PartitionSpec(RULES["batch"]), NamedSharding(mesh, PartitionSpec())
    # Each process's rows fill its own row shards: pad them to a multiple with copies of row 0.
    n, shards = len(tokens), data_parallel_size(mesh) // jax.process_count()
    extra = -n % max(shards, 1)
    put_rows = lambda x: jax.make_array_from_process_local_data(NamedSharding(mesh, rows), np.concatenate([x, x[:1].repeat(extra, 0)]))
    put_same = lambda x: jax.make_array_from_callback(np.shape(x), same, lambda idx: np.asarray(x)[idx])
    out = (put_rows(tokens), put_rows(valid), put_same(stops), put_same(seed))
    return out, lambda a: np.asarray(multihost_utils.global_array_to_host_local_array(a, mesh, rows))[:n], extra
