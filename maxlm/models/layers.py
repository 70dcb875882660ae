"""Decoder building blocks: RMSNorm (optionally 1 + weight), RoPE (incl. llama3 scaling), GQA attention
(optional q/k norms, sliding window on some or all layers, soft-capped scores), SwiGLU / GeGLU.

Letters: B batch, T query length, S key length, D model, N query heads, K kv heads,
H head dim, F mlp, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from maxlm.config import LoraConfig, ModelConfig, RopeScalingConfig, head_dim
from maxlm.models import quant, splash
from maxlm.models.block_causal import block_causal_attention, masked_attention
from maxlm.models.ring import ring_attention
from maxlm.parallel.rules import axis_size, constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], cfg: ModelConfig, init: str = "normal", fan_in: int | None = None) -> nnx.Param:
    """Returns a Param carrying logical axis names; normal init scaled by fan-in unless `ones`/`zeros`."""
    dtype = DTYPES[cfg.param_dtype]
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        std = cfg.init_std if fan_in is None else fan_in ** -0.5
        value = (std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def linear(x: jax.Array, w: jax.Array, n_in: int = 1, out_dtype=None) -> jax.Array:
    """Returns x contracted over its last `n_in` dims with the first `n_in` dims of w."""
    # As one 2-D GEMM: XLA:CPU runs the weight gradient of a [B,T,D]x[D,F] einsum ~2x slower.
    lead, contract, out = x.shape[: x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
    y = jnp.dot(x.reshape(-1, math.prod(contract)), w.astype(x.dtype).reshape(math.prod(contract), -1), preferred_element_type=out_dtype)
    return y.reshape(*lead, *out)


class Adapter(nnx.Module):
    """A low-rank update of one projection (LoRA): (alpha / r) · (x @ a) @ b, with a [in..., r] random and
    b [r, out...] zero, so that a fresh adapter changes nothing. Stored under `<projection>_lora`; an MoE's
    experts have one each, stacked over `lead` (a [E, in, r], b [E, r, out], applied in moe.dispatch)."""

    def __init__(self, cfg: ModelConfig, lora: LoraConfig, rngs: nnx.Rngs, in_shape: tuple[int, ...], in_axes: tuple[str, ...],
                 out_shape: tuple[int, ...], out_axes: tuple[str, ...], lead: tuple[int, ...] = (), lead_axes: tuple[str, ...] = ()):
        self.scale = lora.alpha / lora.rank
        self.dropout = lora.dropout
        self.n_in = len(in_shape)
        self.a = param(rngs, (*lead, *in_shape, lora.rank), (*lead_axes, *in_axes, "lora_rank"), cfg, fan_in=math.prod(in_shape))
        self.b = param(rngs, (*lead, lora.rank, *out_shape), (*lead_axes, "lora_rank", *out_axes), cfg, init="zeros")

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """Returns the update of x's projection: x contracted over its last n_in dims, shaped [..., out...];
        with a key, lora.dropout on x first (the adapter's input only, as PEFT's lora_dropout)."""
        if dropout_key is not None and self.dropout > 0:
            keep = 1.0 - self.dropout
            x = jnp.where(jax.random.bernoulli(dropout_key, keep, x.shape), x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
        return linear(linear(x, self.a[...], self.n_in), self.b[...]) * jnp.asarray(self.scale, x.dtype)


def adapters(module: nnx.Module, cfg: ModelConfig, lora: LoraConfig | None, rngs: nnx.Rngs, shapes: dict, lead=(), lead_axes=()) -> None:
    """Adds an Adapter `<name>_lora` to `module` for each of its projections (`shapes`: name -> (in, in axes, out, out axes))
    that lora targets; with lora.base_dtype int8 / nf4, every projection becomes quantized values beside a `<name>_scale` (models/quant.py).
    With `lead` (an MoE's experts), each projection is one matrix per lead index, and so is its adapter."""
    if lora is None or lora.rank == 0:
        return
    for name, (i, i_axes, o, o_axes) in shapes.items():
        if name in lora.targets:
            setattr(module, f"{name}_lora", Adapter(cfg, lora, rngs, i, i_axes, o, o_axes, lead, lead_axes))
        if lora.base_dtype in quant.QUANTIZED:
            hold_quantized(module, name, lora, i, i_axes, o, o_axes, lead, lead_axes)


def hold_quantized(module: nnx.Module, name: str, lora: LoraConfig, i, i_axes, o, o_axes, lead=(), lead_axes=()) -> None:
    """Replaces the module's projection `name` by lora.base_dtype's quantized values and their `<name>_scale`: one
    [in..., out...] matrix each, stacked over `lead` dims (an MoE's experts)."""
    # Shapes only: a LoRA run's base is loaded (models/lora.py held_base), never initialized here.
    values, scale = quant.held_shapes(i, o, lora)
    scale_axes = (*lead_axes, *(None for _ in range(len(scale.shape) - len(o))), *o_axes)
    setattr(module, name, nnx.Param(jnp.zeros((*lead, *values.shape), values.dtype), out_sharding=(*lead_axes, *i_axes, *o_axes),
                                    eager_sharding=False))
    setattr(module, name + quant.SCALE, nnx.Param(jnp.ones((*lead, *scale.shape), scale.dtype), out_sharding=scale_axes, eager_sharding=False))


def weight(module: nnx.Module, name: str, n_in: int = 1, lead: int = 0) -> jax.Array:
    """Returns the module's projection `name` as it computes: a quantized one dequantized (f32), one matrix per `lead` dims."""
    w = getattr(module, name)[...]
    scale = getattr(module, name + quant.SCALE, None)
    if scale is None:
        return w
    fn = functools.partial(quant.dequantize, n_in=n_in)
    for _ in range(lead):
        fn = jax.vmap(fn)
    return fn(w, scale[...])


PROJECTION_IDS = {name: i for i, name in enumerate(("q", "k", "v", "o", "gate", "up", "down"))}  # each adapter's own dropout stream


def project(module: nnx.Module, name: str, x: jax.Array, n_in: int = 1, dropout_key: jax.Array | None = None) -> jax.Array:
    """Returns x through the module's projection `name` (a quantized one dequantized as it is used), plus its adapter's update when it has one."""
    y = linear(x, weight(module, name, n_in), n_in)
    adapter = getattr(module, f"{name}_lora", None)
    if adapter is None:
        return y
    return y + adapter(x, None if dropout_key is None else jax.random.fold_in(dropout_key, PROJECTION_IDS[name]))


class RMSNorm(nnx.Module):
    """x / rms(x) * scale over the last axis (D by default; H for q/k norms), computed in f32; with
    `norm_offset` the factor is 1 + scale and the stored scale starts at zero (Gemma's layout)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, size: int | None = None, axis: str = "embed"):
        self.eps = cfg.norm_eps
        self.offset = 1.0 if cfg.norm_offset else 0.0
        self.scale = param(rngs, (size or cfg.hidden_size,), (axis,), cfg, init="zeros" if cfg.norm_offset else "ones")

    def __call__(self, x_xC: jax.Array) -> jax.Array:
        """Returns `x_xC` ([..., C]: [B, T, D], or [B, T, N, H] for q/k) normalized over C, in its dtype."""
        x = x_xC.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * (self.offset + self.scale[...].astype(jnp.float32))).astype(x_xC.dtype)


def rope_inv_freq(dim: int, theta: float, scaling: RopeScalingConfig) -> jax.Array:
    """Returns the [H/2] inverse frequencies, with Llama 3.1's piecewise rescaling when asked."""
    inv = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if scaling.type == "linear":
        return inv / scaling.factor
    if scaling.type == "llama3":
        wavelen = 2 * jnp.pi / inv
        low_wl = scaling.original_max_position / scaling.low_freq_factor
        high_wl = scaling.original_max_position / scaling.high_freq_factor
        smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        mid = (1 - smooth) * inv / scaling.factor + smooth * inv
        inv = jnp.where(wavelen > low_wl, inv / scaling.factor, jnp.where(wavelen < high_wl, inv, mid))
    return inv


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Returns x rotated by position, in the half-split layout that HF checkpoints use."""
    angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
    sin = jnp.sin(angles)[:, :, None, :]
    cos = jnp.cos(angles)[:, :, None, :]
    x = x_BxTxNxH.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)


def sliding_window_mask(t: int, s: int, first_slot, window: int) -> jax.Array:
    """Returns the [1, T, S] bool band: query slot first_slot + i sees key slot j when it lies fewer than `window` behind.

    Behind modulo S, for a cache used as a ring (continuous batching); keys ahead of the query,
    which the band then also admits near the ring's end, are hidden by the causal / valid mask.
    """
    slots_T = first_slot + jnp.arange(t)
    return ((slots_T[:, None] - jnp.arange(s)[None, :]) % s < window)[None]


@dataclasses.dataclass
class KVCache:
    """One layer's preallocated keys and values; `k`/`v`: [B, K, H, S].

    Slots last: the layout both attention dots of a decode step read, so XLA does not transpose
    the whole cache every step (with [B, S, K, H] it did, twice per layer).
    """

    k: jax.Array
    v: jax.Array


jax.tree_util.register_dataclass(KVCache, data_fields=["k", "v"], meta_fields=[])


class Attention(nnx.Module):
    """Grouped-query attention with RoPE (after per-head q/k RMSNorm with `qk_norm`); attends within a
    segment and, on the layers that slide, to the last `sliding_window` keys only; optionally through a KV cache.

    With local and global layers (`global_every`), whether this layer slides is the traced `local`
    flag of the layer scan; the layers share one compiled body.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoraConfig | None = None):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, head_dim(cfg)
        self.qkv_bias = cfg.qkv_bias
        self.qk_norm = cfg.qk_norm
        self.window = cfg.sliding_window
        self.mixed = cfg.sliding_window > 0 and cfg.global_every > 0
        self.scale = (cfg.query_pre_attn_scalar or h) ** -0.5
        self.softcap = cfg.attn_softcap
        self.impl = cfg.attention
        # Plain tuple: module attributes must be hashable static data, unlike the config dataclass.
        sc = cfg.rope_scaling
        self.rope = (h, cfg.rope_theta, sc.type, sc.factor, sc.low_freq_factor, sc.high_freq_factor, sc.original_max_position)
        self.rope_local_theta = cfg.rope_local_theta
        self.q = param(rngs, (d, n, h), ("embed", "heads", "head_dim"), cfg, fan_in=d)
        self.k = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg, fan_in=d)
        self.v = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), cfg, fan_in=d)
        self.o = param(rngs, (n, h, d), ("heads", "head_dim", "embed"), cfg, fan_in=n * h)
        adapters(self, cfg, lora, rngs, {
            "q": ((d,), ("embed",), (n, h), ("heads", "head_dim")),
            "k": ((d,), ("embed",), (k, h), ("kv_heads", "head_dim")),
            "v": ((d,), ("embed",), (k, h), ("kv_heads", "head_dim")),
            "o": ((n, h), ("heads", "head_dim"), (d,), ("embed",)),
        })
        if cfg.qkv_bias:
            self.q_bias = param(rngs, (n, h), ("heads", "head_dim"), cfg, init="zeros")
            self.k_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), cfg, init="zeros")
            self.v_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), cfg, init="zeros")
        if cfg.qk_norm:
            # One [H] scale shared by all heads, as in Qwen3.
            self.q_norm = RMSNorm(cfg, rngs=rngs, size=h, axis="head_dim")
            self.k_norm = RMSNorm(cfg, rngs=rngs, size=h, axis="head_dim")

    def inv_freq(self, local) -> jax.Array:
        """Returns this layer's [H/2] RoPE frequencies: the local base's, unscaled, where `local` and rope_local_theta > 0."""
        h, theta, *scaling = self.rope
        inv = rope_inv_freq(h, theta, RopeScalingConfig(*scaling))
        if not self.rope_local_theta:
            return inv
        return jnp.where(local, rope_inv_freq(h, self.rope_local_theta, RopeScalingConfig()), inv)

    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache: KVCache | None = None, cache_index=None, local=True, dropout_key=None):
        """Returns (out [B,T,D], updated cache or None); with a cache, writes T slots at `cache_index`; `dropout_key`: the adapters' dropout.

        Without a cache the mask must be causal: attention skips the key blocks above the diagonal
        (and, on a sliding layer, those behind the window). `local`: bool scalar, may be traced.
        """
        dt = x_BxTxD.dtype
        inv_freq = self.inv_freq(local)
        q_BxTxNxH = project(self, "q", x_BxTxD, dropout_key=dropout_key)
        k_BxTxKxH = project(self, "k", x_BxTxD, dropout_key=dropout_key)
        v_BxTxKxH = project(self, "v", x_BxTxD, dropout_key=dropout_key)
        if self.qkv_bias:
            q_BxTxNxH = q_BxTxNxH + self.q_bias[...].astype(dt)
            k_BxTxKxH = k_BxTxKxH + self.k_bias[...].astype(dt)
            v_BxTxKxH = v_BxTxKxH + self.v_bias[...].astype(dt)
        if self.qk_norm:
            q_BxTxNxH, k_BxTxKxH = self.q_norm(q_BxTxNxH), self.k_norm(k_BxTxKxH)
        q_BxTxNxH = constrain(apply_rope(q_BxTxNxH, positions_BxT, inv_freq), ("batch", "length", "act_heads", None))
        k_BxSxKxH = constrain(apply_rope(k_BxTxKxH, positions_BxT, inv_freq), ("batch", "length", "act_kv_heads", None))
        v_BxSxKxH = constrain(v_BxTxKxH, ("batch", "length", "act_kv_heads", None))
        if cache is not None:
            write = lambda c, x_BxTxKxH: jax.lax.dynamic_update_slice_in_dim(c, jnp.transpose(x_BxTxKxH, (0, 2, 3, 1)).astype(c.dtype), cache_index, axis=3)
            cache = KVCache(write(cache.k, k_BxSxKxH), write(cache.v, v_BxSxKxH))
            k_BxSxKxH, v_BxSxKxH = (jnp.transpose(c, (0, 3, 1, 2)).astype(dt) for c in (cache.k, cache.v))
        full_BxTxS = mask_BxTxS
        if self.window:
            # Slots, not positions: within a segment, and between a cache's valid slots, the two differ by the same.
            first = 0 if cache_index is None else cache_index
            mask_BxTxS = mask_BxTxS & sliding_window_mask(mask_BxTxS.shape[1], mask_BxTxS.shape[2], first, self.window)
        whole_rows = cache is None and axis_size("context") == 1  # else each device holds a part of the queries
        if cache is None and not whole_rows:
            def ring(window: int):
                return ring_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, full_BxTxS, window, self.scale, self.softcap)

            out_BxTxNxH = jax.lax.cond(local, lambda: ring(self.window), lambda: ring(0)) if self.mixed else ring(self.window)
        elif whole_rows and self.impl == "splash" and splash.supported(mask_BxTxS.shape[1]):
            def flash(window: int):
                return splash.splash_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, full_BxTxS, window, self.scale, self.softcap)

            out_BxTxNxH = jax.lax.cond(local, lambda: flash(self.window), lambda: flash(0)) if self.mixed else flash(self.window)
        elif whole_rows and self.impl in ("xla", "splash"):
            def attend(window: int, mask):
                return block_causal_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, window, self.scale, self.softcap)

            if self.mixed:
                # A traced flag cannot pick which key blocks to slice: each branch slices its own, one runs.
                out_BxTxNxH = jax.lax.cond(local, lambda: attend(self.window, mask_BxTxS), lambda: attend(0, full_BxTxS))
            else:
                out_BxTxNxH = attend(self.window, mask_BxTxS)
        else:
            if self.mixed:
                mask_BxTxS = jnp.where(local, mask_BxTxS, full_BxTxS)
            if self.softcap:  # jax's fused attention has no soft-capping
                out_BxTxNxH = masked_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS, self.scale, self.softcap)
            else:
                out_BxTxNxH = jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask_BxTxS[:, None, :, :],
                                                           scale=self.scale, implementation="cudnn" if self.impl == "cudnn" else "xla")
        out = project(self, "o", out_BxTxNxH, n_in=2, dropout_key=dropout_key)
        return constrain(out, ("batch", "length", "act_embed")), cache


ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


class MLP(nnx.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)), act silu (SwiGLU) or tanh-approximated GELU (GeGLU)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoraConfig | None = None):
        d, f = cfg.hidden_size, cfg.mlp_dim
        self.activation = cfg.mlp_activation
        self.gate = param(rngs, (d, f), ("embed", "mlp"), cfg, fan_in=d)
        self.up = param(rngs, (d, f), ("embed", "mlp"), cfg, fan_in=d)
        self.down = param(rngs, (f, d), ("mlp", "embed"), cfg, fan_in=f)
        up = ((d,), ("embed",), (f,), ("mlp",))
        adapters(self, cfg, lora, rngs, {"gate": up, "up": up, "down": ((f,), ("mlp",), (d,), ("embed",))})

    def __call__(self, x_BxTxD: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        g = project(self, "gate", x_BxTxD, dropout_key=dropout_key)
        u = project(self, "up", x_BxTxD, dropout_key=dropout_key)
        h = constrain(ACTIVATIONS[self.activation](g) * u, ("batch", "length", "act_mlp"))
        return constrain(project(self, "down", h, dropout_key=dropout_key), ("batch", "length", "act_embed"))


class Block(nnx.Module):
    """One pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(x)); with `post_norms` each
    branch's output is normed again before its residual add (Gemma). Given `moe` (a mixture of experts,
    models/moe.py), that replaces the MLP."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, moe: nnx.Module | None = None, lora: LoraConfig | None = None):
        self.post_norms = cfg.post_norms
        self.attn_norm = RMSNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs, lora=lora)
        self.mlp_norm = RMSNorm(cfg, rngs=rngs)
        if moe is not None:
            self.moe = moe
        else:
            self.mlp = MLP(cfg, rngs=rngs, lora=lora)
        if cfg.post_norms:
            self.attn_post_norm = RMSNorm(cfg, rngs=rngs)
            self.mlp_post_norm = RMSNorm(cfg, rngs=rngs)

    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, cache=None, cache_index=None, local=True, valid_BxT=None, dropout_key=None):
        """Returns (x [B,T,D], cache, router stats: {} unless MoE); `local`: whether this layer slides (a traced bool
        under the layer scan); `valid_BxT`: the tokens the router statistics count; `dropout_key`: LoRA dropout's."""
        a_BxTxD, cache = self.attn(self.attn_norm(x_BxTxD), positions_BxT, mask_BxTxS, cache, cache_index, local, dropout_key)
        if self.post_norms:
            a_BxTxD = self.attn_post_norm(a_BxTxD)
        x_BxTxD = x_BxTxD + a_BxTxD
        stats = {}
        if hasattr(self, "moe"):
            m_BxTxD, stats = self.moe(self.mlp_norm(x_BxTxD), valid_BxT)
        else:
            m_BxTxD = self.mlp(self.mlp_norm(x_BxTxD), dropout_key)
        if self.post_norms:
            m_BxTxD = self.mlp_post_norm(m_BxTxD)
        return x_BxTxD + m_BxTxD, cache, stats
