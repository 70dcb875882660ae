"""The Llama-family decoder (Llama 2, Llama 3.x, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 text, Mixtral, Qwen3-MoE) as one Flax NNX module.

Layers are stored stacked ([L, ...] leading axis, logical name "layers") and run under
`jax.lax.scan` with a selectable remat policy, so compile time does not grow with depth;
which layers slide (Gemma's local / global pattern) is a scanned [L] flag, not a second body. An MoE
model's experts are stacked per layer too ([L, E, ...]); its router statistics come out of the scan.
Letters: B batch, T length, S key length, D model, V vocab, L layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maxlm.config import LoraConfig, ModelConfig, sliding_layers
from maxlm.models.block_causal import softcap
from maxlm.models.layers import DTYPES, Block, KVCache, RMSNorm, linear, param
from maxlm.models.moe import MoE
from maxlm.parallel.rules import constrain

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def causal_segment_mask(segment_ids_BxT: jax.Array) -> jax.Array:
    """Returns the [B, T, T] bool mask: causal, and only within the same packed segment."""
    t = segment_ids_BxT.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    return causal[None] & same


class Decoder(nnx.Module):
    """Token embedding → L pre-norm blocks → final norm → LM head (and optional scalar head); with
    `lora` (rank > 0), low-rank adapters on its target projections (layers.Adapter)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoraConfig | None = None):
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be resolved (from the tokenizer) before building the model")
        self.num_layers = cfg.num_layers
        self.dtype = cfg.dtype
        self.remat = cfg.remat
        self.scan_layers = cfg.scan_layers
        self.tie_embeddings = cfg.tie_embeddings
        self.embed_scale = cfg.hidden_size ** 0.5 if cfg.embed_scale else 0.0
        self.final_softcap = cfg.final_softcap
        self.sliding = sliding_layers(cfg)
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(r: nnx.Rngs) -> Block:
            return Block(cfg, rngs=r, moe=MoE(cfg, rngs=r, lora=lora) if cfg.num_experts else None, lora=lora)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg, fan_in=cfg.hidden_size)
        if cfg.scalar_head:
            self.score_head = param(rngs, (cfg.hidden_size,), ("embed",), cfg, init="zeros")

    def hidden(self, tokens_BxT, positions_BxT, mask_BxTxS, cache: KVCache | None = None, cache_index=None, dropout_key=None):
        """Returns (final-normed hidden states [B, T, D], the updated cache: stacked [L, ...], a tuple of L per-layer caches, or None).

        Without a cache, `mask_BxTxS` must be causal (as from causal_segment_mask). `dropout_key`
        (training steps of a LoRA run): the adapters' dropout, one stream per layer.
        """
        return self.forward(tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index, dropout_key=dropout_key)[:2]

    def forward(self, tokens_BxT, positions_BxT, mask_BxTxS, cache: KVCache | None = None, cache_index=None, valid_BxT=None,
                dropout_key=None):
        """Returns (hidden [B, T, D], cache, router stats summed over layers: {} for a dense model), as `hidden`.

        The stats (moe.router_stats) count the tokens where `valid_BxT` (default: all); moe.router_losses turns them into losses.
        """
        dt = DTYPES[self.dtype]
        x = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dt)
        if self.embed_scale:
            # Rounded to the compute dtype first, as Gemma's reference does (sqrt(3584) is 59.75 in bf16).
            x = x * jnp.asarray(self.embed_scale, dt)
        x = constrain(x, ("batch", "length", "act_embed"))
        if valid_BxT is None:
            valid_BxT = jnp.ones(tokens_BxT.shape, bool)
        graphdef, layer_state = nnx.split(self.layers)
        local_L = jnp.asarray(self.sliding)
        keys_L = None if dropout_key is None else jax.random.split(dropout_key, self.num_layers)

        def body(x, xs):
            state_l, cache_l, local, key_l = xs
            x, cache_l, stats = nnx.merge(graphdef, state_l)(x, positions_BxT, mask_BxTxS, cache_l, cache_index, local, valid_BxT, key_l)
            return x, (cache_l, stats)

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
        if isinstance(cache, tuple):
            # One cache per layer (the sampler's): layers unrolled, each cache updated in place and each
            # layer's weights sliced once outside the decode loop, where a scan would copy both every step.
            caches, stats = [], []
            for i, cache_l in enumerate(cache):
                state_i, local_i, key_i = jax.tree.map(lambda a: a[i], (layer_state, local_L, keys_L))
                x, (c, st) = body(x, (state_i, cache_l, local_i, key_i))
                caches.append(c)
                stats.append(st)
            return self.final_norm(x), tuple(caches), jax.tree.map(lambda *a: sum(a), *stats) if stats[0] else {}
        if self.scan_layers:
            x, (cache, stats_L) = jax.lax.scan(body, x, (layer_state, cache, local_L, keys_L))
        else:
            ys = []
            for i in range(self.num_layers):
                x, y = body(x, jax.tree.map(lambda a: a[i], (layer_state, cache, local_L, keys_L)))
                ys.append(y)
            cache, stats_L = jax.tree.map(lambda *a: jnp.stack(a), *ys)
        return self.final_norm(x), cache, jax.tree.map(lambda a: jnp.sum(a, axis=0), stats_L)

    def head(self) -> jax.Array:
        """Returns the LM head's weights [D, V] (the transposed embedding when tied)."""
        return self.embed[...].T if self.tie_embeddings else self.lm_head[...]

    def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
        """Returns f32 logits [B, T, V], soft-capped with `final_softcap`."""
        logits = linear(hidden_BxTxD, self.head(), out_dtype=jnp.float32)
        return constrain(softcap(logits, self.final_softcap), ("batch", "length", "act_vocab"))

    def scores(self, hidden_BxTxD: jax.Array) -> jax.Array:
        """Returns the scalar head's f32 output [B, T] (reward or value per position)."""
        return jnp.einsum("btd,d->bt", hidden_BxTxD.astype(jnp.float32), self.score_head[...].astype(jnp.float32))

    def __call__(self, tokens_BxT, segment_ids_BxT=None, positions_BxT=None, dropout_key=None) -> jax.Array:
        """Returns f32 logits [B, T, V] for (optionally packed) token rows."""
        b, t = tokens_BxT.shape
        if segment_ids_BxT is None:
            segment_ids_BxT = jnp.ones((b, t), jnp.int32)
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        h, _ = self.hidden(tokens_BxT, positions_BxT, causal_segment_mask(segment_ids_BxT), dropout_key=dropout_key)
        return self.logits(h)

