"""The PPO / GRPO step: one rollout batch in, rl.epochs x rl.minibatches clipped updates out (pure; jit in train/setup.py)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from maxlm.config import Config
from maxlm.losses import rl
from maxlm.losses.logprobs import next_token_weights
from maxlm.optim.update import microbatches, train_step
from maxlm.tasks.rl.objective import policy_gradient, rollout_scores


def prepare_rollouts(graphdef, cfg: Config, value_head: bool, params, batch: dict, ref_params, kl_coef) -> tuple[dict, dict]:
    """Returns (the rollout rows with per-token `old_logp`, `advantages` [and ppo's `old_values`,
    `returns`], rollout statistics) for one rollout batch from `Rollouts`.

    ppo (value_head): rewards are kl_coef x (-KL to the reference) on every completion token plus
    the score on the last, then GAE and (rl.whiten_advantages) whitening; grpo: the group
    advantages broadcast over each completion's tokens.
    """
    r = cfg.rl
    w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
    # Scored in minibatch-sized chunks: the [R, S, V] logits of a whole rollout batch need not fit.
    chunks = jax.lax.map(lambda b: rollout_scores(graphdef, value_head, params, b, ref_params), microbatches(batch, r.minibatches))
    scored = jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), chunks)
    n = jnp.maximum(jnp.sum(w), 1.0)
    stats = {"count": jnp.sum(w)}  # completion tokens trained on
    kl = jnp.zeros_like(w)
    if "ref_logp" in scored:
        kl = rl.kl_penalty(scored["old_logp"], scored["ref_logp"], r.kl_estimator) * w
        stats |= {"kl": jnp.sum(kl) / n, "kl_sequence": jnp.mean(jnp.sum(kl, axis=-1))}
    rows = {k: v for k, v in batch.items() if k not in ("scores", "advantages")} | scored
    if value_head:
        rewards = rl.token_rewards(batch["scores"], kl, w, kl_coef)
        adv, returns = rl.gae(rewards, scored["old_values"], w, r.gamma, r.lam)
        if r.whiten_advantages:
            adv = rl.whiten(adv, w)
        stats |= {"value_mean": jnp.sum(scored["old_values"] * w) / n, "return_mean": jnp.sum(returns * w) / n}
        return rows | {"advantages": adv, "returns": returns}, stats
    return rows | {"advantages": batch["advantages"][:, None] * w}, stats


def weigh_tokens(cfg: Config, minibatch: dict) -> dict:
    """Returns `minibatch` with `loss_weights` [R, S]: rl.loss_agg's per-token weights of the policy loss
    over the whole minibatch (so gradient accumulation's microbatches add up to its exact mean)."""
    w = next_token_weights(minibatch["segment_ids"], minibatch["loss_mask"])
    return minibatch | {"loss_weights": rl.aggregation_weights(w, cfg.rl.loss_agg, cfg.rl.max_new_tokens)}


def rollout_step(graphdef, cfg: Config, tx: optax.GradientTransformation, value_head: bool) -> Callable:
    """Returns step(params, opt_state, batch, ref_params, args) -> (params, opt_state, metrics) for ppo/grpo;
    args = {"kl_coef": f32, "step": i32} (host scalars).

    One call is one rollout batch: `prepare_rollouts` under the policy that sampled it, then
    rl.epochs passes of rl.minibatches clipped updates over shuffled rows, each a `train_step` on the
    minibatch with its rl.loss_agg weights (`weigh_tokens`; so clipping, accumulation and the
    non-finite guard are the ones every task has). Metrics are
    the rollout statistics plus the means over the updates. The shuffle is seeded by
    (train.seed, step): a resumed run repeats it.
    """
    r = cfg.rl
    update = train_step(policy_gradient(graphdef, cfg, value_head), tx, cfg.train)

    def step(params, opt_state, batch, ref_params, args):
        prepared, stats = prepare_rollouts(graphdef, cfg, value_head, params, batch, ref_params, args["kl_coef"])
        rows = batch["tokens"].shape[0]
        key = jax.random.fold_in(jax.random.key(cfg.train.seed), args["step"])

        def epoch(carry, k):
            perm = jax.random.permutation(k, rows)
            mbs = microbatches(jax.tree.map(lambda x: x[perm], prepared), r.minibatches)

            def one(c, mb):
                p, o, m = update(*c, weigh_tokens(cfg, mb))
                return (p, o), m

            return jax.lax.scan(one, carry, mbs)

        (params, opt_state), ms = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, r.epochs))
        metrics = {k: jnp.mean(v) for k, v in ms.items()} | stats
        metrics |= {"nonfinite": jnp.max(ms["nonfinite"]), "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)}
        return params, opt_state, metrics

    return step
