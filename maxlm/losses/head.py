"""Next-token cross-entropy fused with the LM head, computed over sequence chunks.

The [B, T, V] logits are the largest activation of a language model (Llama 3: V = 128k, so
one 4096-token row is 2 GiB in f32). Here they exist one chunk of positions at a time, and
the gradient is formed in the same pass: the loss is a sum, so its cotangent is a scalar,
and d loss / d hidden and d loss / d head can be computed chunk by chunk in the forward and
scaled in the backward. No logits are stored and none are recomputed.

Letters: B batch, T length, C positions per chunk, D model, V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from maxlm.parallel.rules import constrain


def chunk_count(length: int, most: int) -> int:
    """Returns the largest divisor of `length` that is at most `most` (at least 1)."""
    return max(n for n in range(1, max(1, min(most, length)) + 1) if length % n == 0)


def _chunk(x: jax.Array, i: jax.Array, size: int) -> jax.Array:
    """Returns positions [i·size, (i+1)·size) of x along axis 1."""
    return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis=1)


def _chunk_terms(h_BxCxD, head_DxV, targets_BxC, w_BxC, z_loss: float, cap: float):
    """Returns (logits f32 [B, C, V], log Z [B, C], Σ w·nll, Σ w·z·logZ²) for one chunk; head_DxV in h's dtype.

    With `cap` > 0 the logits are cap·tanh(h·head / cap), as the model's own `logits` gives them.
    """
    b, c, d = h_BxCxD.shape
    # 2-D GEMMs throughout: XLA:CPU runs [B, C, D] einsums and their transposes up to 2x slower.
    logits = jnp.dot(h_BxCxD.reshape(b * c, d), head_DxV, preferred_element_type=jnp.float32).reshape(b, c, -1)
    if cap:
        logits = cap * jnp.tanh(logits / cap)
    logits = constrain(logits, ("batch", "length", "act_vocab"))
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_BxC[..., None], axis=-1)[..., 0]
    return logits, log_z, jnp.sum((log_z - picked) * w_BxC), z_loss * jnp.sum(jnp.square(log_z) * w_BxC)


def _sums(hidden_BxTxD, head_DxV, targets_BxT, weights_BxT, z_loss, chunks, cap):
    """Returns (Σ nll + Σ z-loss, (Σ nll, Σ z-loss)) without gradients."""
    size = hidden_BxTxD.shape[1] // chunks
    head = head_DxV.astype(hidden_BxTxD.dtype)

    def body(i, acc):
        _, _, nll, z = _chunk_terms(_chunk(hidden_BxTxD, i, size), head, _chunk(targets_BxT, i, size), _chunk(weights_BxT, i, size), z_loss, cap)
        return acc[0] + nll, acc[1] + z

    nll, z = jax.lax.fori_loop(0, chunks, body, (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)))
    return nll + z, (nll, z)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def fused_next_token_loss(hidden_BxTxD, head_DxV, targets_BxT, weights_BxT, z_loss: float, chunks: int, cap: float = 0.0):
    """Returns (Σ w·nll + z_loss·Σ w·logZ², (Σ w·nll, Σ w·z_loss·logZ²)); only the first carries a gradient.

    `targets_BxT` are the next tokens (already shifted), `weights_BxT` 0 where nothing is
    predicted; `chunks` must divide T; `cap` > 0 soft-caps the logits (model.final_softcap).
    The second output is for metrics only: its cotangent is ignored.
    """
    return _sums(hidden_BxTxD, head_DxV, targets_BxT, weights_BxT, z_loss, chunks, cap)


def _forward(hidden_BxTxD, head_DxV, targets_BxT, weights_BxT, z_loss, chunks, cap):
    size = hidden_BxTxD.shape[1] // chunks
    vocab = head_DxV.shape[1]
    dt = hidden_BxTxD.dtype
    head = head_DxV.astype(dt)

    def body(i, acc):
        d_hidden, d_head, nll_sum, z_sum = acc
        h, t, w = _chunk(hidden_BxTxD, i, size), _chunk(targets_BxT, i, size), _chunk(weights_BxT, i, size)
        logits, log_z, nll, z = _chunk_terms(h, head, t, w, z_loss, cap)
        # d/dlogits of w·(logZ − logit[t]) + w·z·logZ² is w·((1 + 2z·logZ)·softmax − onehot(t)).
        p = jnp.exp(logits - log_z[..., None]) * (w * (1.0 + 2.0 * z_loss * log_z))[..., None]
        g = p - jax.nn.one_hot(t, vocab, dtype=jnp.float32) * w[..., None]
        if cap:  # through cap·tanh(x / cap), whose slope is 1 − tanh² = 1 − (capped / cap)²
            g = g * (1.0 - jnp.square(logits / cap))
        g = g.astype(dt)
        g = constrain(g, ("batch", "length", "act_vocab"))
        g_NxV = g.reshape(-1, vocab)
        dh = jnp.dot(g_NxV, head.T, preferred_element_type=jnp.float32).astype(dt).reshape(h.shape)
        d_hidden = jax.lax.dynamic_update_slice_in_dim(d_hidden, dh, i * size, axis=1)
        # A materialized [D, B·C] transpose: XLA:CPU runs the contraction over a leading token axis ~1.5x slower.
        h_DxN = jax.lax.optimization_barrier(h.reshape(-1, h.shape[-1]).T)
        d_head = d_head + jnp.dot(h_DxN, g_NxV, preferred_element_type=jnp.float32)
        return d_hidden, constrain(d_head, ("embed", "vocab")), nll_sum + nll, z_sum + z

    zero = jnp.zeros((), jnp.float32)
    init = (jnp.zeros_like(hidden_BxTxD), jnp.zeros(head_DxV.shape, jnp.float32), zero, zero)
    d_hidden, d_head, nll, z = jax.lax.fori_loop(0, chunks, body, init)
    grads = (d_hidden, d_head.astype(head_DxV.dtype), targets_BxT, weights_BxT)
    return (nll + z, (nll, z)), grads


def _backward(z_loss, chunks, cap, residuals, cotangents):
    d_hidden, d_head, targets, weights = residuals
    ct = cotangents[0]
    return (
        (ct * d_hidden.astype(jnp.float32)).astype(d_hidden.dtype),
        (ct * d_head).astype(d_head.dtype),
        jnp.zeros(targets.shape, jax.dtypes.float0),  # integer input: float0 cotangent
        jnp.zeros_like(weights),
    )


fused_next_token_loss.defvjp(_forward, _backward)
