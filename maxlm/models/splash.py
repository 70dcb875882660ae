"""Splash attention (`model.attention: splash`): JAX's Pallas TPU flash-attention kernel for the
training and scoring forward, with packed rows' segments, GQA, a sliding window and Gemma's
soft-cap; the [B, N, T, T] scores never exist in HBM.

The kernel runs per device: under a mesh it is wrapped in a shard_map over the batch axes and,
when the tensor axis splits both the query and the key/value heads, over the heads. Segments are
read off the causal segment mask every attention gets: a query's first visible key starts its
segment, so that index is the segment id (exact for contiguous packed segments, padding included).
Off a TPU the kernel runs in Pallas' interpret mode (slow: for checking numerics against the XLA
path on CPU). Lengths that are not a multiple of 128 (the kernel's tile) and the sampler's KV-cache
steps take the XLA path (layers.Attention).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from maxlm.errors import MaxlmError
from maxlm.parallel.rules import logical_to_spec

TILE = 128  # the kernel's lane width: lengths and blocks are multiples of it
MAX_BLOCK = 512


def supported(length: int) -> bool:
    """Returns whether the kernel takes rows of `length` tokens."""
    return length % TILE == 0


def segment_ids(mask_BxTxT: jax.Array) -> jax.Array:
    """Returns int32 [B, T]: each query's first visible key under a causal segment mask (its segment's start)."""
    return jnp.argmax(mask_BxTxT, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=64)
def _kernel(length: int, heads: int, window: int, cap: float, interpret: bool):
    """Returns the splash kernel over `heads` query heads of `length`-token rows: causal, within `window` keys when > 0."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernel_lib,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as mask_lib,
    )

    one = mask_lib.LocalMask((length, length), (window - 1, 0), offset=0) if window else mask_lib.CausalMask((length, length))
    block = max(b for b in range(TILE, min(MAX_BLOCK, length) + 1, TILE) if length % b == 0)
    sizes = kernel_lib.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block, block_kv_dkv=block,
                                  block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return kernel_lib.make_splash_mha(mask_lib.MultiHeadMask([one] * heads), head_shards=1, q_seq_shards=1, block_sizes=sizes,
                                      attn_logits_soft_cap=cap or None, interpret=interpret)


def _targets_tpu() -> bool:
    """Returns whether the step is built for TPUs (the mesh's devices, abstract ones too for `maxlm compile`, else the
    backend); False on CPU (interpret mode); MaxlmError on a GPU, where interpreting the kernel would crawl."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    if platform not in ("tpu", "cpu"):
        raise MaxlmError(f"model.attention splash is a TPU kernel; on {platform} use model.attention cudnn (or xla)")
    return platform == "tpu"


def _attend(q_BxNxTxH, k_BxKxTxH, v_BxKxTxH, seg_BxT, window: int, cap: float):
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import (
        SegmentIds,
    )

    kernel = _kernel(q_BxNxTxH.shape[2], q_BxNxTxH.shape[1], window, cap, not _targets_tpu())
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(s, s)))(q_BxNxTxH, k_BxKxTxH, v_BxKxTxH, seg_BxT)


def splash_attention(q_BxTxNxH: jax.Array, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, mask_BxTxT: jax.Array,
                     window: int, scale: float, cap: float = 0.0) -> jax.Array:
    """Returns softmax(softcap(q·kᵀ·scale, cap)) · v [B, T, N, H] within each segment of the causal segment mask,
    over the last `window` keys when > 0; the kernel's work only on the blocks the mask keeps."""
    dt = q_BxTxNxH.dtype
    q = jnp.transpose(q_BxTxNxH * jnp.asarray(scale, dt), (0, 2, 1, 3))
    k, v = (jnp.transpose(x, (0, 2, 1, 3)) for x in (k_BxTxKxH, v_BxTxKxH))
    seg = segment_ids(mask_BxTxT)
    attend = functools.partial(_attend, window=window, cap=float(cap))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or all(size == 1 for size in mesh.shape.values()):
        out = attend(q, k, v, seg)
    else:
        shape = dict(mesh.shape)
        batch = logical_to_spec(("batch",), q.shape[:1], shape)[0]
        q_heads = logical_to_spec(("act_heads",), q.shape[1:2], shape)[0]
        kv_heads = logical_to_spec(("act_kv_heads",), k.shape[1:2], shape)[0]
        heads = q_heads if q_heads == kv_heads else None  # a local kernel needs whole GQA groups
        qs, ks = PartitionSpec(batch, heads, None, None), PartitionSpec(batch, heads, None, None)
        out = jax.shard_map(attend, mesh=mesh, in_specs=(qs, ks, ks, PartitionSpec(batch, None)), out_specs=qs,
                            check_vma=False)(q, k, v, seg)
    return jnp.transpose(out, (0, 2, 1, 3)).astype(dt)
