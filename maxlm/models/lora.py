"""A LoRA run's params as pure trees: which leaves train, the base with adapters off, and adapters merged into the base.

Adapters (layers.Adapter) sit beside the projection they update, as `<projection>_lora` = {a, b}
(e.g. params["layers"]["attn"]["q_lora"]["a"] [L, D, r]), stacked over layers like every layer leaf.
What trains in a LoRA run: the adapters, and a scalar head (a reward model's or PPO's value head:
a fresh head has nothing of the base to adapt). Everything else is the frozen base.
Letters: L layers, I a projection's inputs (flattened), O its outputs (flattened), r rank.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from maxlm.config import LoraConfig
from maxlm.models import quant

SUFFIX = "_lora"
TRAINED_HEADS = ("score_head",)
# The projections of a layer (params["layers"][block][name]) and how many leading dims (after L) are inputs.
PROJECTIONS = {"q": ("attn", 1), "k": ("attn", 1), "v": ("attn", 1), "o": ("attn", 2), "gate": ("mlp", 1), "up": ("mlp", 1), "down": ("mlp", 1)}
# What a quantized base holds quantized: (block, name) -> (stacked dims after L, input dims); an MoE layer's experts
# [L, E, in, out] are quantized one expert matrix at a time (its router stays float: top-k flips on small errors).
HELD = {(block, name): (0, n_in) for name, (block, n_in) in PROJECTIONS.items()} | {("moe", name): (1, 1) for name in ("gate", "up", "down")}


def is_adapter(key: str) -> bool:
    """Returns whether a params key is an adapter's (`<projection>_lora`)."""
    return key.endswith(SUFFIX)


def split(params: dict, heads: bool = True) -> tuple[dict, dict]:
    """Returns (trainable, frozen): the adapters and (with `heads`) the scalar head, and the rest, as two disjoint nested dicts."""
    trainable, frozen = {}, {}
    for k, v in params.items():
        if is_adapter(k) or (heads and k in TRAINED_HEADS):
            trainable[k] = v
        elif isinstance(v, dict):
            t, f = split(v, heads)
            if t:
                trainable[k] = t
            if f:
                frozen[k] = f
        else:
            frozen[k] = v
    return trainable, frozen


def trainable(params: dict) -> dict:
    """Returns the trainable part of a LoRA run's params (what its checkpoints hold)."""
    return split(params)[0]


def join(a: dict, b: dict) -> dict:
    """Returns the union of two disjoint nested dicts (`split`'s inverse)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = join(out[k], v) if k in out else v
    return out


def adapters_off(params: dict) -> dict:
    """Returns params with every adapter's b zeroed: the base's forward, sharing the base's arrays (the reference of dpo / ppo / grpo)."""
    out = {}
    for k, v in params.items():
        if is_adapter(k):
            out[k] = {"a": v["a"], "b": jnp.zeros_like(v["b"])}
        else:
            out[k] = adapters_off(v) if isinstance(v, dict) else v
    return out


def delta(a_SxIxr: jax.Array, b_Sxrx0: jax.Array, scale: float, stacked: int = 1) -> jax.Array:
    """Returns scale · a @ b per matrix, f32, shaped [S..., in..., out...] like the projection (a [S..., in..., r],
    b [S..., r, out...]) for `stacked` leading dims S (L; L, E for an MoE's experts)."""
    lead, rank = a_SxIxr.shape[:stacked], a_SxIxr.shape[-1]
    a = a_SxIxr.astype(jnp.float32).reshape(*lead, -1, rank)
    b = b_Sxrx0.astype(jnp.float32).reshape(*lead, rank, -1)
    return scale * jnp.einsum("...ir,...ro->...io", a, b).reshape(*a_SxIxr.shape[:-1], *b_Sxrx0.shape[stacked + 1:])


def per_matrix(fn, stacked: int):
    """Returns fn mapped over a leaf's `stacked` leading dims (L, and E for experts): quant's functions take one matrix."""
    for _ in range(stacked):
        fn = jax.vmap(fn)
    return fn


def merged(params: dict, lora: LoraConfig, dtype=jnp.float32, block: str = "") -> dict:
    """Returns plain params: each target projection W + (alpha / r) · a @ b, the adapters dropped; a quantized
    projection dequantized into `dtype` (the model's param dtype) first."""
    out = {}
    for k, v in params.items():
        if is_adapter(k) or k.endswith(quant.SCALE):
            continue
        if k + quant.SCALE in params:
            lead, n_in = HELD[block, k]
            v = per_matrix(functools.partial(quant.dequantize, n_in=n_in), 1 + lead)(v, params[k + quant.SCALE]).astype(dtype)
        adapter = params.get(k + SUFFIX)
        if adapter is not None:
            d = delta(adapter["a"], adapter["b"], lora.alpha / lora.rank, 1 + HELD[block, k][0])
            out[k] = (v.astype(jnp.float32) + d).astype(v.dtype)
        else:
            out[k] = merged(v, lora, dtype, k) if isinstance(v, dict) else v
    return out


def held_base(frozen: dict, lora: LoraConfig) -> dict:
    """Returns the frozen base as `lora.base_dtype` holds it: unchanged, cast to bfloat16, or its projections quantized beside their scales."""
    if lora.base_dtype == "bfloat16":
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, frozen)
    if lora.base_dtype not in quant.QUANTIZED:
        return frozen
    layers = {block: dict(sub) for block, sub in frozen["layers"].items()}
    for (block, name), (lead, n_in) in HELD.items():
        if block in layers:
            fn = per_matrix(functools.partial(quant.quantize, n_in=n_in, lora=lora), 1 + lead)
            layers[block][name], layers[block][name + quant.SCALE] = fn(layers[block][name])
    return frozen | {"layers": layers}


def as_held(w: jax.Array, stacked: int, n_in: int, lora: LoraConfig) -> jax.Array:
    """Returns a projection ([in..., out...] after `stacked` leading dims) as a run with `lora.base_dtype` int8 / nf4
    computes with it: quantized, then dequantized (f32)."""
    return per_matrix(lambda m: quant.dequantize(*quant.quantize(m, n_in, lora), n_in), stacked)(w)


def count(params: dict) -> int:
    """Returns the number of scalars in a params tree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
