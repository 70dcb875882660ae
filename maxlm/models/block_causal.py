"""Causal attention that skips the key blocks above the diagonal (and, with a sliding window, those behind it).

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


def block_causal_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, mask_BxTxT: jax.Array,
                           window: int = 0) -> jax.Array:
    """Returns softmax(q·kᵀ/√H masked)·v [B, T, N, H]; the mask must be causal (nothing above the diagonal)
    and, with a `window` > 0, hide every key `window` or more positions behind its query."""
    b, t, n, h = q_BxTxNxH.shape
    kh = k_BxTxKxH.shape[2]
    g = n // kh
    blocks = block_count(t)
    c = t // blocks
    q = q_BxTxNxH.reshape(b, blocks, c, kh, g, h)
    out = []
    for i in range(blocks):
        # Keys [lo, end): none above the diagonal, and none the window hides from the block's first query.
        lo, end = (max(0, i * c - window + 1) if window else 0), (i + 1) * c
        s = end - lo
        # [B, K, G·C, H]: the G query heads of one key head as rows of one matmul.
        q_i = q[:, i].transpose(0, 2, 3, 1, 4).reshape(b, kh, g * c, h)
        logits = jnp.einsum("bkmh,bskh->bkms", q_i, k_BxTxKxH[:, lo:end], preferred_element_type=jnp.float32)
        logits = logits.reshape(b, kh, g, c, s) * (h ** -0.5)
        keep = mask_BxTxT[:, None, None, i * c:(i + 1) * c, lo:end]
        # Every row keeps its own position, so no row is all masked and softmax stays finite.
        probs = jax.nn.softmax(jnp.where(keep, logits, jnp.finfo(jnp.float32).min), axis=-1).astype(v_BxTxKxH.dtype)
        o = jnp.einsum("bkms,bskh->bkmh", probs.reshape(b, kh, g * c, s), v_BxTxKxH[:, lo:end])
        out.append(o.reshape(b, kh, g, c, h).transpose(0, 3, 1, 2, 4))
    return jnp.concatenate(out, axis=1).reshape(b, t, n, h)
