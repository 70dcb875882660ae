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

    ppo (value_head): rewards are the score on the last completion token (with rl.kl_in "reward":
    plus kl_coef x (-KL to the reference) on every one), then GAE and (rl.whiten_advantages)
    whitening; grpo: rl.advantage's advantages broadcast over each completion's tokens (with
    rl.kl_in "reward": taken here of score - kl_coef x the completion's summed KL, as verl's GRPO
    with use_kl_in_reward, rows not `trained` left out and given 0). Statistics include `tis_ratio_mean` / `tis_ratio_max`, exp(old_logp -
    sample_logp) over the completion tokens: how far the training forward is from the sampler.
    """
    r = cfg.rl
    w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
    # Scored in minibatch-sized chunks: the [R, S, V] logits of a whole rollout batch need not fit.
    chunks = jax.lax.map(lambda b: rollout_scores(graphdef, value_head, params, b, ref_params, temperature=r.temperature),
                         microbatches(batch, r.minibatches))
    scored = jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), chunks)
    n = jnp.maximum(jnp.sum(w), 1.0)
    ratio = jnp.exp(scored["old_logp"] - batch["sample_logp"])
    stats = {
        "count": jnp.sum(w),  # completion tokens trained on
        "tis_ratio_mean": jnp.sum(ratio * w) / n,
        "tis_ratio_max": jnp.max(jnp.where(w > 0, ratio, 0.0)),
    }
    kl = jnp.zeros_like(w)
    if "ref_logp" in scored:
        kl = rl.kl_penalty(scored["old_logp"], scored["ref_logp"], r.kl_estimator) * w
        stats |= {"kl": jnp.sum(kl) / n, "kl_sequence": jnp.mean(jnp.sum(kl, axis=-1))}
    rows = {k: v for k, v in batch.items() if k not in ("scores", "advantages", "trained")} | scored
    reward_kl = kl if r.kl_in == "reward" else jnp.zeros_like(kl)
    if value_head:
        rewards = rl.token_rewards(batch["scores"], reward_kl, w, kl_coef)
        adv, returns = rl.gae(rewards, scored["old_values"], w, r.gamma, r.lam)
        if r.whiten_advantages:
            adv = rl.whiten(adv, w)
        stats |= {"value_mean": jnp.sum(scored["old_values"] * w) / n, "return_mean": jnp.sum(returns * w) / n}
        return rows | {"advantages": adv, "returns": returns}, stats
    if r.kl_in == "reward" and "ref_logp" in scored:
        # The global batch: a batch std (rl.scale_rewards batch, reinforce_pp) is over every process's rows,
        # whose groups stay whole and consecutive (each process holds whole groups), as rollouts.advantages has them.
        shaped = batch["scores"] - kl_coef * jnp.sum(kl, axis=-1)
        adv = rl.group_advantages(shaped, r.group_size, r.advantage, r.scale_rewards, valid_B=batch["trained"])
        return rows | {"advantages": adv[:, None] * w}, stats
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
    non-finite guard are the ones every task has). Metrics are the rollout statistics plus the
    means over the updates done (`updates` of them), and `ratio_first`, the mean |ratio - 1| of
    the first update (0: the trained policy is the one that sampled). The shuffle is seeded by
    (train.seed, step): a resumed run repeats it.
    rl.target_approx_kl > 0: an update whose minibatch measures (before it) an approx KL to the
    sampling policy above the target is dropped with every later one of the batch (the target_kl
    early stop of OpenAI Spinning Up's PPO and SB3). rl.value_warmup_steps: steps 1..N train the
    value head alone (`policy_on` 0 in the objective, the rest of the params kept as they were).
    """
    r = cfg.rl
    update = train_step(policy_gradient(graphdef, cfg, value_head), tx, cfg.train,
                        frozen_base=cfg.lora.rank > 0, dropout=cfg.lora.rank > 0 and cfg.lora.dropout > 0)
    planned = r.epochs * r.minibatches

    def step(params, opt_state, batch, ref_params, args):
        prepared, stats = prepare_rollouts(graphdef, cfg, value_head, params, batch, ref_params, args["kl_coef"])
        rows = batch["tokens"].shape[0]
        key = jax.random.fold_in(jax.random.key(cfg.train.seed), args["step"])
        warm = args["step"] <= r.value_warmup_steps  # steps 1..N: the value head alone
        if r.value_warmup_steps > 0:
            prepared["policy_on"] = jnp.broadcast_to(jnp.logical_not(warm), (rows,)).astype(jnp.float32)

        def one_update(p, o, mb):
            new_p, new_o, m = update(p, o, weigh_tokens(cfg, mb))
            if r.value_warmup_steps > 0:
                # The policy's grads are 0 in warm-up, but AdamW's decoupled weight decay would still move it.
                new_p = jax.tree_util.tree_map_with_path(lambda path, a, b: a if _is_value_head(path) else jnp.where(warm, b, a), new_p, p)
            return new_p, new_o, m

        def one(c, mb):
            p, o, go = c
            if r.target_approx_kl <= 0:
                p, o, m = one_update(p, o, mb)
                return (p, o, go), m

            def run(_):
                new_p, new_o, m = one_update(p, o, mb)
                ok = m["approx_kl"] <= r.target_approx_kl  # measured by this update's forward, before its step
                pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
                return pick(new_p, p), pick(new_o, o), m | {"updated": ok}

            def skip(_):
                shapes = jax.eval_shape(run, None)[2]
                return p, o, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

            p, o, m = jax.lax.cond(go, run, skip, None)
            return (p, o, go & m["updated"]), m

        def epoch(carry, k):
            perm = jax.random.permutation(k, rows)
            mbs = microbatches(jax.tree.map(lambda x: x[perm], prepared), r.minibatches)
            return jax.lax.scan(one, carry, mbs)

        (params, opt_state, _), ms = jax.lax.scan(epoch, (params, opt_state, jnp.bool_(True)), jax.random.split(key, r.epochs))
        ratio_first = ms.pop("ratio_dev")[0, 0]
        if r.target_approx_kl > 0:
            done = ms.pop("updated").astype(jnp.float32)
            updates = jnp.sum(done)
            metrics = {k: jnp.sum(v * done) / jnp.maximum(updates, 1.0) for k, v in ms.items()}
            # The schedule counts rollout batches by planned updates: a dropped one still moves it on.
            opt_state = optax.tree_utils.tree_set(opt_state, count=optax.tree_utils.tree_get(opt_state, "count") + planned - updates.astype(jnp.int32))
        else:
            updates = jnp.float32(planned)
            metrics = {k: jnp.mean(v) for k, v in ms.items()}
        metrics |= stats | {"updates": updates, "ratio_first": ratio_first}
        metrics |= {"nonfinite": jnp.max(ms["nonfinite"]), "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)}
        return params, opt_state, metrics

    return step


def _is_value_head(path) -> bool:
    """Returns whether a params path is PPO's value head (the scalar head on the policy's trunk)."""
    return getattr(path[0], "key", None) == "score_head"
