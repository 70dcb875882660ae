"""Causal attention that skips the key blocks above the diagonal (and, with a sliding window, those behind it);
optionally soft-capped scores (Gemma 2).

`jax.nn.dot_product_attention`'s XLA path scores every query against every key and masks half
of the scores away. Here the queries are cut into n blocks, and block i scores only the keys
up to its own end: (n + 1) / 2n of the work (3/4 for two blocks). The grouped query heads
sharing one key head are stacked into the rows of one matmul, so each block is two batched
matmuls over [batch, kv head]. On a 2-core CPU, at the quickstart's shapes, forward and backward
take less time than jax's path and torch SDPA (tools/bench/attention.py); the train step ~8% less.

Letters: B batch, T length, N query heads, K key/value heads, G = N / K, H head dim,
C positions per block, S keys a block sees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Below this many positions a block's matmuls get too small to gain from skipping.
MIN_BLOCK = 64
MAX_BLOCKS = 8


def block_count(length: int) -> int:
    """Returns how many query blocks to cut `length` into (1: no skipping worth it)."""
    most = max(1, min(MAX_BLOCKS, length // MIN_BLOCK))
    return max(n for n in range(1, most + 1) if length % n == 0)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """Returns cap·tanh(x / cap), or x itself when cap is 0 (Gemma's bound on scores and logits)."""
    return cap * jnp.tanh(x / cap) if cap else x


def masked_attention(q_BxCxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, keep_BxCxS: jax.Array,
                     scale: float, cap: float = 0.0) -> jax.Array:
    """Returns softmax(softcap(q·kᵀ·scale, cap) where kept)·v [B, C, N, H] over all S keys.

    Every row must keep at least one key (a query its own position), so softmax stays finite.
    """
    b, c, n, h = q_BxCxNxH.shape
    s, kh = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
    g = n // kh
    # [B, K, G·C, H]: the G query heads of one key head as rows of one matmul.
    q_BxKxMxH = q_BxCxNxH.reshape(b, c, kh, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * c, h)
    logits = jnp.einsum("bkmh,bskh->bkms", q_BxKxMxH, k_BxSxKxH, preferred_element_type=jnp.float32)
    logits_BxKxGxCxS = softcap(logits.reshape(b, kh, g, c, s) * scale, cap)
    keep = keep_BxCxS[:, None, None]
    probs = jax.nn.softmax(jnp.where(keep, logits_BxKxGxCxS, jnp.finfo(jnp.float32).min), axis=-1).astype(v_BxSxKxH.dtype)
    o_BxKxMxH = jnp.einsum("bkms,bskh->bkmh", probs.reshape(b, kh, g * c, s), v_BxSxKxH)
    return o_BxKxMxH.reshape(b, kh, g, c, h).transpose(0, 3, 1, 2, 4).reshape(b, c, n, h)


def block_causal_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, mask_BxTxT: jax.Array,
                           window: int = 0, scale: float | None = None, cap: float = 0.0) -> jax.Array:
    """Returns masked_attention over the keys each query block can see [B, T, N, H] (scale 1/√H by default); the
    mask must be causal (nothing above the diagonal) and, with a `window` > 0, hide every key `window` or more
    positions behind its query."""
    t, h = q_BxTxNxH.shape[1], q_BxTxNxH.shape[3]
    scale = h ** -0.5 if scale is None else scale
    blocks = block_count(t)
    c = t // blocks
    out = []
    for i in range(blocks):
        # Keys [lo, end): none above the diagonal, and none the window hides from the block's first query.
        lo, end = (max(0, i * c - window + 1) if window else 0), (i + 1) * c
        rows = slice(i * c, end)
        out.append(masked_attention(q_BxTxNxH[:, rows], k_BxTxKxH[:, lo:end], v_BxTxKxH[:, lo:end], mask_BxTxT[:, rows, lo:end],
                                    scale, cap))
    return jnp.concatenate(out, axis=1)
