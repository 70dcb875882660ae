"""Ring attention for context parallelism (`mesh.context` > 1): each device holds a contiguous part
of every row's positions; its queries attend to the key/value blocks as they travel around the
ring of `context` devices (one `ppermute` a step), with an online softmax, so no device ever holds
the whole row's keys, values or scores.

Causal load balancing: before the ring, the positions are reordered so that device i holds part i
and part 2·context - 1 - i of the row's 2·context equal parts (and the output is put back after),
so every device has the same share of keys to attend to; a block whose keys all lie after its
queries is skipped (a `cond` per step: no work, only the pass-on). Segments are read off the
causal segment mask as in splash.py (each query's first visible key), so packed rows and padding
attend as the mask says; a sliding window and Gemma's soft-cap are applied to the scores.

Letters: B batch, C positions per device, N query heads, K key/value heads, G = N / K, H head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from maxlm.models.block_causal import softcap
from maxlm.models.splash import segment_ids
from maxlm.parallel.rules import logical_to_spec

AXIS = "context"
HIDDEN = -1e30  # a masked score: finite, so a block a query cannot see leaves its running max in place
QUERY_BLOCK = 1024  # queries scored at a time: a [block, C] tile of scores per head, never [C, C]


def balanced_order(length: int, devices: int) -> np.ndarray:
    """Returns the position order that gives device i parts i and 2·devices - 1 - i of 2·devices equal parts."""
    parts = np.arange(length).reshape(2 * devices, -1)
    return np.concatenate([np.concatenate([parts[i], parts[2 * devices - 1 - i]]) for i in range(devices)])


def _update(o, m, l, q, q_slots, seg_q, k, v, seg_k, k_slots, window: int, cap: float):
    """Returns the running (output, max, sum) of one block of queries after attending to one key/value block."""
    keep_QxC = q_slots[:, None] >= k_slots[None, :]
    if window:
        keep_QxC &= q_slots[:, None] - k_slots[None, :] < window
    keep = (keep_QxC[None] & (seg_q[:, :, None] == seg_k[:, None, :]))[:, None, None]
    s = softcap(jnp.einsum("bkgqh,bskh->bkgqs", q, k.astype(jnp.float32)), cap)
    s = jnp.where(keep, s, HIDDEN)
    m_new = jnp.maximum(m, jnp.max(s, axis=-1))
    p = jnp.where(keep, jnp.exp(s - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    return o * corr[..., None] + jnp.einsum("bkgqs,bskh->bkgqh", p, v.astype(jnp.float32)), m_new, l * corr + jnp.sum(p, axis=-1)


def _ring(q_BxCxNxH, k_BxCxKxH, v_BxCxKxH, seg_BxC, slots_C, window: int, scale: float, cap: float, devices: int):
    b, c, n, h = q_BxCxNxH.shape
    kh = k_BxCxKxH.shape[2]
    block = max(d for d in range(1, min(c, QUERY_BLOCK) + 1) if c % d == 0)
    nq = c // block
    # Query blocks lead: [nq, B, K, G, block, H]; each block's scores are recomputed in the backward pass, not stored.
    q = jnp.transpose(q_BxCxNxH.reshape(b, nq, block, kh, n // kh, h), (1, 0, 3, 4, 2, 5)).astype(jnp.float32) * scale
    q_slots, seg_q = slots_C.reshape(nq, block), jnp.transpose(seg_BxC.reshape(b, nq, block), (1, 0, 2))
    update = jax.checkpoint(functools.partial(_update, window=window, cap=cap))
    shift = [(i, (i + 1) % devices) for i in range(devices)]

    def visit(carry, step):
        o, m, l, k, v, seg_k, k_slots = carry

        def attend(o, m, l):
            return jax.lax.map(lambda x: update(*x, k, v, seg_k, k_slots), (o, m, l, q, q_slots, seg_q))

        # a block whose keys all come after these queries holds nothing they may see
        o, m, l = jax.lax.cond(jnp.min(k_slots) <= jnp.max(slots_C), attend, lambda o, m, l: (o, m, l), o, m, l)
        k, v, seg_k, k_slots = (jax.lax.ppermute(x, AXIS, shift) for x in (k, v, seg_k, k_slots))
        return (o, m, l, k, v, seg_k, k_slots), None

    stats = q.shape[:-1]
    start = (jnp.zeros(q.shape, jnp.float32), jnp.full(stats, HIDDEN, jnp.float32), jnp.zeros(stats, jnp.float32),
             k_BxCxKxH, v_BxCxKxH, seg_BxC, slots_C)
    (o, _, l, *_), _ = jax.lax.scan(visit, start, jnp.arange(devices))
    out = o / l[..., None]  # every query sees at least itself
    return jnp.transpose(out, (1, 0, 4, 2, 3, 5)).reshape(b, c, n, h).astype(q_BxCxNxH.dtype)


def ring_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, mask_BxTxT: jax.Array,
                   window: int, scale: float, cap: float = 0.0) -> jax.Array:
    """Returns softmax(softcap(q·kᵀ·scale, cap))·v [B, T, N, H] within the causal segment mask (and the last `window`
    keys when > 0), the positions split over the mesh's `context` axis and the key/value blocks passed around it."""
    mesh = jax.sharding.get_abstract_mesh()
    shape = dict(mesh.shape)
    batch = logical_to_spec(("batch",), q_BxTxNxH.shape[:1], shape)[0]
    q_heads = logical_to_spec(("act_heads",), q_BxTxNxH.shape[2:3], shape)[0]
    kv_heads = logical_to_spec(("act_kv_heads",), k_BxTxKxH.shape[2:3], shape)[0]
    heads = q_heads if q_heads == kv_heads else None  # a device's queries need their whole GQA groups
    x_spec, seg_spec = PartitionSpec(batch, AXIS, heads, None), PartitionSpec(batch, AXIS)
    devices, length = shape[AXIS], q_BxTxNxH.shape[1]
    ring = functools.partial(_ring, window=window, scale=scale, cap=float(cap), devices=devices)
    order = balanced_order(length, devices) if length % (2 * devices) == 0 else np.arange(length)
    q, k, v, seg = (jnp.take(x, order, axis=1) for x in (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segment_ids(mask_BxTxT)))
    out = jax.shard_map(ring, mesh=mesh, in_specs=(x_spec, x_spec, x_spec, seg_spec, PartitionSpec(AXIS)), out_specs=x_spec,
                        check_vma=False)(q, k, v, seg, jnp.asarray(order, jnp.int32))
    return jnp.take(out, np.argsort(order), axis=1)
