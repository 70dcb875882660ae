"""Pure loss functions on arrays. Each returns sums and counts, never means, so that packing
and gradient accumulation give the exact global mean.

Letters: B batch, T length, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_token_weights(segment_ids_BxT: jax.Array, loss_mask_BxT: jax.Array) -> jax.Array:
    """Returns [B, T-1] f32 weights: position t predicts t+1 only inside one packed segment."""
    same = (segment_ids_BxT[:, 1:] == segment_ids_BxT[:, :-1]) & (segment_ids_BxT[:, 1:] != 0)
    return same.astype(jnp.float32) * loss_mask_BxT[:, 1:].astype(jnp.float32)


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (log p(target) [B, T], log Z [B, T]), both f32."""
    # f32 here: a bf16 log-softmax loses the tail of the distribution.
    logits = logits_BxTxV.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    return picked - log_z, log_z


def next_token_loss(logits_BxTxV, tokens_BxT, segment_ids_BxT, loss_mask_BxT, z_loss: float = 0.0) -> dict:
    """Returns {"nll_sum", "z_sum", "count"}: summed cross-entropy, summed z-loss, target count."""
    w = next_token_weights(segment_ids_BxT, loss_mask_BxT)
    logp, log_z = token_logprobs(logits_BxTxV[:, :-1], tokens_BxT[:, 1:])
    return {
        "nll_sum": -jnp.sum(logp * w),
        "z_sum": z_loss * jnp.sum(jnp.square(log_z) * w),
        "count": jnp.sum(w),
    }
