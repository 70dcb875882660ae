"""Next-token targets, weights and log-probs on arrays: the pieces every likelihood-based loss is built from.
Each returns sums and counts, never means, so that packing and gradient accumulation give the exact global mean.

Letters: B batch, T length, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def next_targets(tokens_BxT: jax.Array) -> jax.Array:
    """Returns [B, T] int targets: position t predicts token t+1; column T-1 is 0 (its weight is 0)."""
    # Shift the targets, not the logits: slicing [B, T-1, V] would copy the largest activation.
    return jnp.pad(tokens_BxT[:, 1:], ((0, 0), (0, 1)))


def next_token_weights(segment_ids_BxT: jax.Array, loss_mask_BxT: jax.Array) -> jax.Array:
    """Returns [B, T] f32 weights: position t predicts t+1 only inside one packed segment; column T-1 is 0."""
    same = (segment_ids_BxT[:, 1:] == segment_ids_BxT[:, :-1]) & (segment_ids_BxT[:, 1:] != 0)
    w = same.astype(jnp.float32) * loss_mask_BxT[:, 1:].astype(jnp.float32)
    return jnp.pad(w, ((0, 0), (0, 1)))


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (log p(target) [B, T], log Z [B, T]), both f32."""
    # f32 here: a bf16 log-softmax loses the tail of the distribution.
    logits = logits_BxTxV.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    return picked - log_z, log_z


def sequence_logps(token_logps_BxT: jax.Array, mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns (summed log-probs [B] f32, token counts [B] f32) over the positions where mask_BxT is 1.

    Sums, not means: the caller divides where a loss is length-normalized, so that packed or
    accumulated batches keep the exact per-sequence value.
    """
    w_BxT = mask_BxT.astype(jnp.float32)
    return jnp.sum(token_logps_BxT.astype(jnp.float32) * w_BxT, axis=-1), jnp.sum(w_BxT, axis=-1)
