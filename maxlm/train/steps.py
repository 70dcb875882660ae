"""Step functions (pure: state and batch in, new state and metrics out); jit is applied in loop.py.

A step takes an objective from `objectives.py`, so every gradient task (pretrain, SFT, RM,
DPO, and each update of PPO / GRPO) shares one update rule: summed loss / summed count,
clipping, non-finite guard.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from maxlm.config import Config, TrainConfig
from maxlm.train import objectives, rl
from maxlm.train.losses import next_token_weights
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
        finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
        # A non-finite step leaves params and optimizer state exactly as they were (optim.adamw).
        updates, new_opt_state = tx.update(grads, opt_state, params, finite=finite)
        metrics = report(sums) | {"grad_norm": grad_norm, "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
        return optax.apply_updates(params, updates), new_opt_state, metrics

    return step


def eval_step(objective: Objective) -> Callable:
    """Returns step(params, batch, ref_params=None) -> the objective's sums, for held-out metrics."""

    def step(params: Any, batch: dict, ref_params: Any = None) -> dict:
        return objective(params, batch, ref_params)[1]

    return step


def prepare_rollouts(graphdef, cfg: Config, params, batch: dict, ref_params, kl_coef) -> tuple[dict, dict]:
    """Returns (the rollout rows with per-token `old_logp`, `advantages` [and ppo's `old_values`,
    `returns`], rollout statistics) for one rollout batch from `Rollouts`.

    ppo: rewards are kl_coef x (-KL to the reference) on every completion token plus the score on
    the last, then GAE and (rl.whiten_advantages) whitening; grpo: the group advantages broadcast
    over each completion's tokens.
    """
    r = cfg.rl
    w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
    # Scored in minibatch-sized chunks: the [R, S, V] logits of a whole rollout batch need not fit.
    chunks = jax.lax.map(lambda b: objectives.rollout_scores(graphdef, cfg, params, b, ref_params), _microbatches(batch, r.minibatches))
    scored = jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), chunks)
    n = jnp.maximum(jnp.sum(w), 1.0)
    stats = {"count": jnp.sum(w)}  # completion tokens trained on
    kl = jnp.zeros_like(w)
    if "ref_logp" in scored:
        kl = rl.kl_penalty(scored["old_logp"], scored["ref_logp"], r.kl_estimator) * w
        stats |= {"kl": jnp.sum(kl) / n, "kl_sequence": jnp.mean(jnp.sum(kl, axis=-1))}
    rows = {k: v for k, v in batch.items() if k not in ("scores", "advantages")} | scored
    if cfg.task == "ppo":
        rewards = rl.token_rewards(batch["scores"], kl, w, kl_coef)
        adv, returns = rl.gae(rewards, scored["old_values"], w, r.gamma, r.lam)
        if r.whiten_advantages:
            adv = rl.whiten(adv, w)
        stats |= {"value_mean": jnp.sum(scored["old_values"] * w) / n, "return_mean": jnp.sum(returns * w) / n}
        return rows | {"advantages": adv, "returns": returns}, stats
    return rows | {"advantages": batch["advantages"][:, None] * w}, stats


def rollout_step(graphdef, cfg: Config, tx: optax.GradientTransformation) -> Callable:
    """Returns step(params, opt_state, batch, ref_params, kl_coef, step) -> (params, opt_state, metrics) for ppo/grpo.

    One call is one rollout batch: `prepare_rollouts` under the policy that sampled it, then
    rl.epochs passes of rl.minibatches clipped updates over shuffled rows, each a `train_step`
    (so clipping, accumulation and the non-finite guard are the ones every task has). Metrics are
    the rollout statistics plus the means over the updates. The shuffle is seeded by
    (train.seed, step): a resumed run repeats it.
    """
    r = cfg.rl
    update = train_step(objectives.policy_gradient(graphdef, cfg), tx, cfg.train)

    def step(params, opt_state, batch, ref_params, kl_coef, step_index):
        prepared, stats = prepare_rollouts(graphdef, cfg, params, batch, ref_params, kl_coef)
        rows = batch["tokens"].shape[0]
        key = jax.random.fold_in(jax.random.key(cfg.train.seed), step_index)

        def epoch(carry, k):
            perm = jax.random.permutation(k, rows)
            mbs = _microbatches(jax.tree.map(lambda x: x[perm], prepared), r.minibatches)

            def one(c, mb):
                p, o, m = update(*c, mb)
                return (p, o), m

            return jax.lax.scan(one, carry, mbs)

        (params, opt_state), ms = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, r.epochs))
        metrics = {k: jnp.mean(v) for k, v in ms.items()} | stats
        metrics |= {"nonfinite": jnp.max(ms["nonfinite"]), "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)}
        return params, opt_state, metrics

    return step
