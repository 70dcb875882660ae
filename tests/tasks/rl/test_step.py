"""The PPO / GRPO rollout step against re-derivations: where rl.kl_in puts the KL to the reference
(advantages by numpy), rl.target_approx_kl's early stop (a plain loop of the same updates, its KL
in numpy) and ppo's value warm-up (the policy unchanged, bit for bit)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maxlm.config import Config, RLConfig, TrainConfig
from maxlm.optim import optimizer
from maxlm.optim.update import microbatches, train_step
from maxlm.tasks.rl.objective import policy_gradient
from maxlm.tasks.rl.step import prepare_rollouts, rollout_step

TRAIN = TrainConfig(learning_rate=3e-2, warmup_steps=0, schedule="constant", global_batch_size=4)


def _batch(tiny, task, scores=True):
    """The fixture's rows as Rollouts hands them to the step (sample_logp: the training forward's own, as a sampler at T = 1 gives)."""
    b = dict(tiny.batch) | {"sample_logp": (tiny.logp(tiny.params) * tiny.w).astype(np.float32)}
    if task == "grpo":
        s = tiny.scores.reshape(-1, 2)
        b["advantages"] = ((s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1).astype(np.float32)
    if task == "ppo" or scores:
        b["scores"] = tiny.scores
    return {k: jnp.asarray(v) for k, v in b.items()}


def test_grpo_with_the_kl_in_the_reward_groups_score_minus_the_completions_kl(tiny):
    cfg = Config(task="grpo", model=tiny.model, rl=RLConfig(group_size=2, kl_in="reward", kl_estimator="k1", minibatches=2))
    got, _ = prepare_rollouts(tiny.graphdef, cfg, False, tiny.params, _batch(tiny, "grpo"), tiny.ref, jnp.float32(0.7))
    lp, ref = tiny.logp(tiny.params), tiny.logp(tiny.ref)
    reward = [tiny.scores[r] - 0.7 * sum(lp[r, t] - ref[r, t] for t in np.nonzero(tiny.w[r])[0]) for r in range(8)]
    for g in range(4):
        a, b = reward[2 * g], reward[2 * g + 1]
        mean, std = (a + b) / 2, math.sqrt(((a - b) ** 2) / 2)  # the unbiased std of two
        for r, x in ((2 * g, a), (2 * g + 1, b)):
            np.testing.assert_allclose(np.asarray(got["advantages"][r]), (x - mean) / (std + 1e-6) * tiny.w[r], rtol=1e-4, atol=1e-5)
    # kl_in loss (grpo's default): the host's group advantages, untouched.
    cfg = Config(task="grpo", model=tiny.model, rl=RLConfig(group_size=2, kl_in="loss", minibatches=2))
    batch = _batch(tiny, "grpo", scores=False)
    got, _ = prepare_rollouts(tiny.graphdef, cfg, False, tiny.params, batch, tiny.ref, jnp.float32(0.7))
    np.testing.assert_array_equal(np.asarray(got["advantages"]), np.asarray(batch["advantages"])[:, None] * tiny.w)


def test_ppo_with_the_kl_in_the_loss_leaves_it_out_of_the_rewards(tiny):
    g = tiny.graphdef
    loss_cfg = Config(task="ppo", model=tiny.model, rl=RLConfig(kl_in="loss", minibatches=2))
    free_cfg = Config(task="ppo", model=tiny.model, rl=RLConfig(kl_in="reward", minibatches=2))
    got, stats = prepare_rollouts(g, loss_cfg, True, tiny.params, _batch(tiny, "ppo"), tiny.ref, jnp.float32(0.7))
    want, _ = prepare_rollouts(g, free_cfg, True, tiny.params, _batch(tiny, "ppo"), tiny.ref, jnp.float32(0.0))  # rewards: the score alone
    kl_rewarded, _ = prepare_rollouts(g, free_cfg, True, tiny.params, _batch(tiny, "ppo"), tiny.ref, jnp.float32(0.7))
    np.testing.assert_array_equal(np.asarray(got["returns"]), np.asarray(want["returns"]))
    np.testing.assert_array_equal(np.asarray(got["advantages"]), np.asarray(want["advantages"]))
    assert float(jnp.max(jnp.abs(kl_rewarded["returns"] - want["returns"]))) > 1e-3  # the KL would have moved them
    assert float(stats["kl"]) > 0  # still measured and logged


def _k3_mean(logp, old, w):
    on = np.nonzero(w)
    d = old[on] - logp[on]
    return float(np.mean(np.exp(d) - 1 - d))


def test_target_approx_kl_drops_the_update_that_measures_past_it_and_every_later_one(tiny):
    epochs, mbs = 3, 2
    base = Config(task="grpo", model=tiny.model, train=TRAIN, rl=RLConfig(group_size=2, kl_coef=0.0, epochs=epochs, minibatches=mbs))
    batch = _batch(tiny, "grpo", scores=False)
    args = {"kl_coef": np.float32(0), "step": np.int32(3)}
    tx = optimizer.optimizer(TRAIN, epochs * mbs)
    # The same updates by hand, in the step's shuffled order; each one's approx KL (k3) measured in numpy before it.
    prepared, _ = prepare_rollouts(tiny.graphdef, base, False, tiny.params, batch, None, jnp.float32(0))
    update = jax.jit(train_step(policy_gradient(tiny.graphdef, base, False), tx, TRAIN))
    keys = jax.random.split(jax.random.fold_in(jax.random.key(TRAIN.seed), 3), epochs)
    p, o, trail = tiny.params, tx.init(tiny.params), []
    for e in range(epochs):
        perm = jax.random.permutation(keys[e], 8)
        split = microbatches(jax.tree.map(lambda x: x[perm], prepared), mbs)
        for m in range(mbs):
            mb = jax.tree.map(lambda x: x[m], split)
            rows = np.asarray(perm).reshape(-1, mbs)[:, m]  # the strided split's rows
            kl = _k3_mean(tiny.logp(p)[rows], np.asarray(mb["old_logp"]), tiny.w[rows])
            p2, o2, metrics = update(p, o, mb)
            assert float(metrics["approx_kl"]) == pytest.approx(kl, rel=1e-3, abs=1e-7)
            trail.append((kl, p))
            p, o = p2, o2
    kls = [k for k, _ in trail]
    assert kls[0] < 1e-9 and max(kls) > 1e-3
    # A target the k-th update is the first to measure past.
    k = next(i for i in range(2, len(kls)) if kls[i] > max(kls[:i]) * 1.5)
    target = (max(kls[:k]) + kls[k]) / 2
    cfg = dataclasses.replace(base, rl=dataclasses.replace(base.rl, target_approx_kl=target))
    step = jax.jit(rollout_step(tiny.graphdef, cfg, tx, False))
    params, opt_state, m = step(tiny.params, tx.init(tiny.params), batch, None, args)
    assert float(m["updates"]) == k
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(trail[k][1])):  # after the first k updates (one more moves them ~1e-2)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=2e-5)  # one jit vs several: rounding
    np.testing.assert_allclose(float(m["approx_kl"]), np.mean(kls[:k]), rtol=1e-3, atol=1e-7)  # the updates done
    assert int(optax.tree_utils.tree_get(opt_state, "count")) == epochs * mbs  # the schedule still counts a whole rollout batch
    # Off (0): every update, as before.
    _, _, m = jax.jit(rollout_step(tiny.graphdef, base, tx, False))(tiny.params, tx.init(tiny.params), batch, None, args)
    assert float(m["updates"]) == epochs * mbs


def test_value_warmup_trains_the_head_and_leaves_the_policy_bit_for_bit(tiny):
    cfg = Config(task="ppo", model=tiny.model, train=TRAIN, rl=RLConfig(value_warmup_steps=2, kl_coef=0.0, epochs=2, minibatches=2))
    tx = optimizer.optimizer(TRAIN, 4)  # weight_decay 0.1: AdamW alone would move every decayed weight
    step = jax.jit(rollout_step(tiny.graphdef, cfg, tx, True))
    params, opt_state = jax.tree.map(jnp.array, tiny.params), tx.init(tiny.params)
    start = jax.tree.map(np.asarray, tiny.params)
    for s in (1, 2):
        params, opt_state, m = step(params, opt_state, _batch(tiny, "ppo"), None, {"kl_coef": np.float32(0), "step": np.int32(s)})
        assert float(m["policy_loss"]) == 0.0 and float(m["value_loss"]) > 0
    for k in start:
        same = all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(start[k]), jax.tree.leaves(params[k])))
        assert same == (k != "score_head"), k  # the head trained, nothing else moved
    np.testing.assert_array_equal(tiny.logp(params), tiny.logp(tiny.params))
    params, _, _ = step(params, opt_state, _batch(tiny, "ppo"), None, {"kl_coef": np.float32(0), "step": np.int32(3)})
    assert not np.array_equal(np.asarray(params["lm_head"]), start["lm_head"])  # step 3: the policy trains
