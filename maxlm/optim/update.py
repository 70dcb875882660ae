"""The update step every gradient task shares (pure: state and batch in, new state and metrics out).

An objective is `objective(params, batch, ref_params) -> (loss_sum, sums)`: sums, never means.
`sums["count"]` is the denominator (target tokens for language modelling, pairs for RM/DPO,
completion tokens for PPO/GRPO), every `*_sum` entry is reported divided by it, and other
entries (`tokens`) are reported as they are. So gradient accumulation and several processes
give the exact global mean. jit is applied in train/setup.py.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from maxlm.config import TrainConfig
from maxlm.models import lora

Objective = Callable[[Any, dict, Any], tuple[jax.Array, dict]]


def microbatches(batch: dict, n: int) -> dict:
    """Returns `batch` split into n microbatches stacked on a new leading axis [n, rows / n, ...]."""
    # Strided split: each device's contiguous rows feed every microbatch, so no resharding.
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), batch)


def report(sums: dict) -> dict:
    """Returns the logged metrics of `sums`: each `x_sum` as x = sum / count, the rest as they are."""
    count = jnp.maximum(sums["count"], 1.0)
    return {(k[:-4] if k.endswith("_sum") else k): (v / count if k.endswith("_sum") else v) for k, v in sums.items()}


def train_step(objective: Objective, tx: optax.GradientTransformation, cfg: TrainConfig, frozen_base: bool = False,
               dropout: bool = False) -> Callable:
    """Returns step(params, opt_state, batch, ref_params=None) -> (params, opt_state, metrics), skipping non-finite updates.

    frozen_base (LoRA): only `lora.split`'s trainable part is differentiated and updated, and
    `opt_state` is the optimizer state of that part alone; the base passes through unchanged.
    dropout (lora.dropout > 0): the objective's batch gets a `dropout_key` drawn from (train.seed,
    the optimizer's update count, the microbatch), so a resumed run draws the same masks.
    """
    def loss(trainable, frozen, batch, ref_params):
        return objective(lora.join(trainable, frozen) if frozen_base else trainable, batch, ref_params)

    grad_fn = jax.value_and_grad(loss, has_aux=True)

    def step(params: Any, opt_state: Any, batch: dict, ref_params: Any = None):
        trainable, frozen = lora.split(params) if frozen_base else (params, None)
        key = jax.random.fold_in(jax.random.key(cfg.seed), optax.tree_utils.tree_get(opt_state, "count")) if dropout else None

        def with_key(b: dict, i) -> dict:
            return b if key is None else b | {"dropout_key": jax.random.fold_in(key, i)}

        if cfg.grad_accum_steps == 1:
            (_, sums), grads = grad_fn(trainable, frozen, with_key(batch, 0), ref_params)
        else:
            def body(carry, xs):
                mb, i = xs
                (_, s), g = grad_fn(trainable, frozen, with_key(mb, i), ref_params)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            mbs = microbatches(batch, cfg.grad_accum_steps)
            first = with_key(jax.tree.map(lambda x: x[0], mbs), 0)
            shapes = jax.eval_shape(lambda: grad_fn(trainable, frozen, first, ref_params)[0][1])
            zeros = jax.tree.map(jnp.zeros_like, (trainable, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)))
            (grads, sums), _ = jax.lax.scan(body, zeros, (mbs, jnp.arange(cfg.grad_accum_steps)))
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
        # A non-finite step leaves params and optimizer state exactly as they were (optimizer.adamw).
        updates, new_opt_state = tx.update(grads, opt_state, trainable, finite=finite)
        metrics = report(sums) | {"grad_norm": grad_norm, "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
        new = optax.apply_updates(trainable, updates)
        return (lora.join(new, frozen) if frozen_base else new), new_opt_state, metrics

    return step


def eval_step(objective: Objective) -> Callable:
    """Returns step(params, batch, ref_params=None) -> the objective's sums, for held-out metrics."""

    def step(params: Any, batch: dict, ref_params: Any = None) -> dict:
        return objective(params, batch, ref_params)[1]

    return step
