"""Mixture-of-experts feed-forward (Mixtral, Qwen3-MoE): a softmax top-k router and dropless SwiGLU experts.

Dropless: every token reaches all k of its experts, whatever the load. The N·k (token, expert)
assignments are sorted by expert so that each expert's rows are contiguous, and the experts'
stacked weights [E, D, F] are applied with one grouped matmul (`jax.lax.ragged_dot`); the rows
are then unsorted and summed with the router weights. The dispatch runs apart on each data × fsdp
shard of the batch (parallel.rules.per_data_shard), so a sort spans one shard's tokens; within a
shard, with the experts split over the mesh's `expert` axis, XLA's partitioner runs each expert
shard's groups locally and sums the shards (tests/models/test_moe.py: 1 and 8 devices give the same loss).
Letters: B batch, T length, D model, E experts, F expert mlp, N = B·T tokens, K experts per token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from maxlm.config import LoraConfig, ModelConfig, expert_dim
from maxlm.models.layers import adapters, linear, param, weight
from maxlm.parallel.rules import constrain, per_data_shard


def route(logits_NxE: jax.Array, k: int, renormalize: bool) -> tuple[jax.Array, jax.Array]:
    """Returns (weights [N, K] f32, expert ids [N, K] int32): the top-k of softmax(logits), rescaled to sum 1 with `renormalize`."""
    probs_NxE = jax.nn.softmax(logits_NxE.astype(jnp.float32), axis=-1)
    w_NxK, ids_NxK = jax.lax.top_k(probs_NxE, k)
    if renormalize:
        w_NxK = w_NxK / jnp.sum(w_NxK, axis=-1, keepdims=True)
    return w_NxK, ids_NxK.astype(jnp.int32)


def router_stats(logits_NxE: jax.Array, ids_NxK: jax.Array, valid_N: jax.Array) -> dict[str, jax.Array]:
    """Returns one layer's sums over the valid tokens: top-k hits per expert [E], softmax mass per expert [E],
    logsumexp(logits)² (scalar) and the token count, from which the decoder forms the router losses."""
    e = logits_NxE.shape[-1]
    v_N = valid_N.astype(jnp.float32)
    logits = logits_NxE.astype(jnp.float32)
    hits_NxE = jnp.sum(jax.nn.one_hot(ids_NxK, e, dtype=jnp.float32), axis=1)
    lse_N = jax.nn.logsumexp(logits, axis=-1)
    return {
        "hits": jnp.einsum("ne,n->e", hits_NxE, v_N),
        "probs": jnp.einsum("ne,n->e", jax.nn.softmax(logits, axis=-1), v_N),
        "z": jnp.sum(lse_N * lse_N * v_N),
        "tokens": jnp.sum(v_N),
    }


def router_losses(stats: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Returns (load-balancing loss, z-loss) from router_stats summed over layers.

    Load balancing as HF's load_balancing_loss_func: E·Σ_i f_i·P_i with f_i the share of top-k
    slots and P_i the mean router probability of expert i, both pooled over layers and tokens
    (k when perfectly balanced). z-loss: the mean over layers and tokens of logsumexp(logits)².
    """
    tokens = jnp.maximum(stats["tokens"], 1.0)
    e = stats["hits"].shape[-1]
    aux = e * jnp.sum((stats["hits"] / tokens) * (stats["probs"] / tokens))
    return aux, stats["z"] / tokens


class MoE(nnx.Module):
    """Top-k routed SwiGLU experts: Σ_k w_k · down_e(silu(gate_e(x)) · up_e(x)) over each token's k experts."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoraConfig | None = None):
        d, f, e = cfg.hidden_size, expert_dim(cfg), cfg.num_experts
        self.k = cfg.experts_per_token
        self.renormalize = cfg.router_renormalize
        # The router's E ("router", never split): top-k needs every expert's logit on one device.
        self.router = param(rngs, (d, e), ("embed", "router"), cfg, fan_in=d)
        self.gate = param(rngs, (e, d, f), ("expert", "embed", "mlp"), cfg, fan_in=d)
        self.up = param(rngs, (e, d, f), ("expert", "embed", "mlp"), cfg, fan_in=d)
        self.down = param(rngs, (e, f, d), ("expert", "mlp", "embed"), cfg, fan_in=f)
        # A LoRA run's experts: an adapter per targeted expert matrix, and a quantized base held one [in, out] matrix per expert.
        up = ((d,), ("embed",), (f,), ("mlp",))
        adapters(self, cfg, lora, rngs, {"gate": up, "up": up, "down": ((f,), ("mlp",), (d,), ("embed",))}, lead=(e,), lead_axes=("expert",))

    def __call__(self, x_BxTxD: jax.Array, valid_BxT: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns (out [B, T, D], router_stats over the tokens where `valid_BxT`)."""
        b, t, d = x_BxTxD.shape
        dt = x_BxTxD.dtype
        x_NxD = x_BxTxD.reshape(b * t, d)
        logits_NxE = linear(x_NxD, self.router[...])
        w_NxK, ids_NxK = route(logits_NxE, self.k, self.renormalize)
        stats = router_stats(logits_NxE, ids_NxK, valid_BxT.reshape(-1))
        experts = {name: weight(self, name, lead=1).astype(dt) for name in ("gate", "up", "down")}
        adapted = {name: getattr(self, f"{name}_lora") for name in experts if hasattr(self, f"{name}_lora")}
        # Adapters enter the shard_map in f32 and their path runs in f32: their gradients are summed over the data shards
        # where they meet x, and XLA:CPU's all-reduce promotion aborts on a bfloat16 sum there.
        lora = {name: (ad.a[...].astype(jnp.float32), ad.b[...].astype(jnp.float32)) for name, ad in adapted.items()}
        scale = next(iter(adapted.values())).scale if adapted else 0.0
        # The dispatch is row-local: run apart per data-parallel shard, it sorts only that shard's tokens.
        out_NxD = per_data_shard(functools.partial(dispatch, k=self.k, scale=scale), 3, x_NxD, ids_NxK, w_NxK.astype(dt), experts, lora)
        return constrain(out_NxD.reshape(b, t, d), ("batch", "length", "act_embed")), stats


def dispatch(x_NxD, ids_NxK, w_NxK, experts: dict, lora: dict, *, k: int, scale: float = 0.0) -> jax.Array:
    """Returns [N, D]: Σ_k w · expert_k(x) with each token's rows sorted by expert and run as grouped matmuls.

    `experts`: gate, up [E, D, F] and down [E, F, D]; `lora`: name -> (a [E, in, r], b [E, r, out]) for the
    adapted ones, each adding scale · (x @ a_e) @ b_e to its expert's matmul.
    """
    n, d = x_NxD.shape
    # Stable sort by expert: slot j of the sorted rows is assignment order[j], token order[j] // K.
    order_M = jnp.argsort(ids_NxK.reshape(-1), stable=True)
    sizes_E = jnp.bincount(ids_NxK.reshape(-1), length=experts["gate"].shape[0]).astype(jnp.int32)

    def grouped(name, x_Mxi):
        y = jax.lax.ragged_dot(x_Mxi, experts[name], sizes_E)
        if name in lora:
            a, b = lora[name]
            low = jax.lax.ragged_dot(jax.lax.ragged_dot(x_Mxi.astype(a.dtype), a, sizes_E), b, sizes_E)
            y = y + (scale * low).astype(y.dtype)
        return y

    x_MxD = jnp.take(x_NxD, order_M // k, axis=0)
    y_MxD = grouped("down", jax.nn.silu(grouped("gate", x_MxD)) * grouped("up", x_MxD))
    # Unsort by the inverse permutation (a gather, not a scatter-add), then weigh each token's k rows.
    y_NxKxD = jnp.take(y_MxD, jnp.argsort(order_M), axis=0).reshape(n, k, d)
    return jnp.einsum("nkd,nk->nd", y_NxKxD, w_NxK)
