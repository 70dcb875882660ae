"""Step functions (pure: state and batch in, new state and metrics out); jit is applied in loop.py.

A batch is a dict of [B, T] arrays: tokens, segment_ids, positions, loss_mask.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from maxlm.config import TrainConfig
from maxlm.models.params import bind
from maxlm.train.losses import next_token_loss


def _loss(graphdef: nnx.GraphDef, z_loss: float) -> Callable:
    def loss_fn(params, batch):
        logits = bind(graphdef, params)(batch["tokens"], batch["segment_ids"], batch["positions"])
        out = next_token_loss(logits, batch["tokens"], batch["segment_ids"], batch["loss_mask"], z_loss)
        return out["nll_sum"] + out["z_sum"], out

    return loss_fn


def _microbatches(batch: dict, n: int) -> dict:
    # Strided split: each device's contiguous rows feed every microbatch, so no resharding.
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, cfg: TrainConfig) -> Callable:
    """Returns step(params, opt_state, batch) -> (params, opt_state, metrics), skipping non-finite updates."""
    grad_fn = jax.value_and_grad(_loss(graphdef, cfg.z_loss), has_aux=True)

    def step(params: Any, opt_state: Any, batch: dict):
        if cfg.grad_accum_steps == 1:
            (_, out), grads = grad_fn(params, batch)
        else:
            def body(carry, mb):
                (_, o), g = grad_fn(params, mb)
                return jax.tree.map(jnp.add, carry, (g, o)), None

            zeros = jax.tree.map(jnp.zeros_like, (params, {"nll_sum": 0.0, "z_sum": 0.0, "count": 0.0}))
            (grads, out), _ = jax.lax.scan(body, zeros, _microbatches(batch, cfg.grad_accum_steps))
        count = jnp.maximum(out["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        grad_norm = optax.global_norm(grads)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(out["nll_sum"]) & jnp.isfinite(grad_norm)
        # A non-finite step leaves params and optimizer state exactly as they were.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = {
            "loss": out["nll_sum"] / count,
            "z_loss": out["z_sum"] / count,
            "grad_norm": grad_norm,
            "tokens": out["count"],
            "nonfinite": jnp.logical_not(finite).astype(jnp.int32),
        }
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics

    return step


def eval_step(graphdef: nnx.GraphDef) -> Callable:
    """Returns step(params, batch) -> {"nll_sum", "count"} for held-out loss."""
    loss_fn = _loss(graphdef, 0.0)

    def step(params: Any, batch: dict) -> dict:
        _, out = loss_fn(params, batch)
        return {"nll_sum": out["nll_sum"], "count": out["count"]}

    return step
