"""Step functions (pure: state and batch in, new state and metrics out); jit is applied in loop.py.

A step takes an objective from `objectives.py`, so every gradient task (pretrain, SFT, RM,
DPO) shares one update rule: summed loss / summed count, clipping, non-finite guard.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from maxlm.config import TrainConfig
from maxlm.train.objectives import Objective, report


def _microbatches(batch: dict, n: int) -> dict:
    # Strided split: each device's contiguous rows feed every microbatch, so no resharding.
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def train_step(objective: Objective, tx: optax.GradientTransformation, cfg: TrainConfig) -> Callable:
    """Returns step(params, opt_state, batch, ref_params=None) -> (params, opt_state, metrics), skipping non-finite updates."""
    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(params: Any, opt_state: Any, batch: dict, ref_params: Any = None):
        if cfg.grad_accum_steps == 1:
            (_, sums), grads = grad_fn(params, batch, ref_params)
        else:
            def body(carry, mb):
                (_, s), g = grad_fn(params, mb, ref_params)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], _microbatches(batch, cfg.grad_accum_steps)), ref_params)[0][1])
            zeros = jax.tree.map(jnp.zeros_like, (params, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)))
            (grads, sums), _ = jax.lax.scan(body, zeros, _microbatches(batch, cfg.grad_accum_steps))
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        grad_norm = optax.global_norm(grads)
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
        # A non-finite step leaves params and optimizer state exactly as they were.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics = report(sums) | {"grad_norm": grad_norm, "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics

    return step


def eval_step(objective: Objective) -> Callable:
    """Returns step(params, batch, ref_params=None) -> the objective's sums, for held-out metrics."""

    def step(params: Any, batch: dict, ref_params: Any = None) -> dict:
        return objective(params, batch, ref_params)[1]

    return step
