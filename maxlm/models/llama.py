"""The Llama-family decoder (Llama 2, Llama 3.x, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 text) as one Flax NNX module.

Layers are stored stacked ([L, ...] leading axis, logical name "layers") and run under
`jax.lax.scan` with a selectable remat policy, so compile time does not grow with depth;
which layers slide (Gemma's local / global pattern) is a scanned [L] flag, not a second body.
Letters: B batch, T length, S key length, D model, V vocab, L layers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maxlm.config import LoraConfig, ModelConfig, sliding_layers
from maxlm.models.block_causal import softcap
from maxlm.models.layers import DTYPES, Block, KVCache, RMSNorm, linear, param
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
            return Block(cfg, rngs=r, lora=lora)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg, fan_in=cfg.hidden_size)
        if cfg.scalar_head:
            self.score_head = param(rngs, (cfg.hidden_size,), ("embed",), cfg, init="zeros")

    def hidden(self, tokens_BxT, positions_BxT, mask_BxTxS, cache: KVCache | None = None, cache_index=None, dropout_key=None):
        """Returns (final-normed hidden states [B, T, D], updated stacked cache or None).

        Without a cache, `mask_BxTxS` must be causal (as from causal_segment_mask). `dropout_key`
        (training steps of a LoRA run): the adapters' dropout, one stream per layer.
        """
        dt = DTYPES[self.dtype]
        x = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dt)
        if self.embed_scale:
            # Rounded to the compute dtype first, as Gemma's reference does (sqrt(3584) is 59.75 in bf16).
            x = x * jnp.asarray(self.embed_scale, dt)
        x = constrain(x, ("batch", "length", "act_embed"))
        graphdef, layer_state = nnx.split(self.layers)
        local_L = jnp.asarray(self.sliding)
        keys_L = None if dropout_key is None else jax.random.split(dropout_key, self.num_layers)

        def body(x, xs):
            state_l, cache_l, local, key_l = xs
            return nnx.merge(graphdef, state_l)(x, positions_BxT, mask_BxTxS, cache_l, cache_index, local, key_l)

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=not self.scan_layers)
        if self.scan_layers:
            x, cache = jax.lax.scan(body, x, (layer_state, cache, local_L, keys_L))
        else:
            caches = []
            for i in range(self.num_layers):
                x, c = body(x, jax.tree.map(lambda a: a[i], (layer_state, cache, local_L, keys_L)))
                caches.append(c)
            cache = None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *caches)
        return self.final_norm(x), cache

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

