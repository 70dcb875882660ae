"""The PPO / GRPO objective on prepared rollout rows against plain numpy loops: the policy at the
sampling temperature, truncated importance sampling (rl.tis_cap) with each ratio, clip range and
loss aggregation, the KL to the reference in the loss (rl.kl_in), and ppo's value warm-up (the
head alone trains)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import Config, RLConfig
from maxlm.tasks.rl.objective import policy_gradient
from maxlm.tasks.rl.step import weigh_tokens


def _config(task="grpo", **rl):
    return Config(task=task, rl=RLConfig(**rl))  # the objective reads the rl section alone


def _rows(tiny, rng, temperature):
    """The fixture's rows with an old policy a little off the current one, a sampler off that, and random advantages."""
    logp = tiny.logp(tiny.params, temperature)
    old = (logp + rng.normal(scale=0.3, size=logp.shape)) * tiny.w
    sample = (old + rng.normal(scale=0.5, size=logp.shape)) * tiny.w
    adv = rng.normal(size=logp.shape) * tiny.w
    batch = {k: jnp.asarray(v) for k, v in tiny.batch.items()} | {"loss_weights": jnp.asarray(tiny.w, jnp.float32)}  # token_mean
    return logp, old, sample, adv, batch | {"old_logp": jnp.asarray(old, jnp.float32), "sample_logp": jnp.asarray(sample, jnp.float32),
                                            "advantages": jnp.asarray(adv, jnp.float32)}


def _clipped_term(ratio, a, low, high):
    clipped = -a * min(max(ratio, 1 - low), 1 + high)
    return max(-a * ratio, clipped), clipped > -a * ratio


@pytest.mark.parametrize("cap, ratio_kind, agg, low, high", [
    (0.0, "token", "token_mean", 0.2, 0.2), (1.5, "token", "token_mean", 0.2, 0.2), (1e6, "token", "token_mean", 0.2, 0.2),
    (1.5, "token", "constant", 0.1, 0.28),  # clip-higher, Dr. GRPO's constant
    (1.5, "sequence", "sequence_mean", 0.05, 0.08),  # GSPO
])
def test_truncated_importance_weights_multiply_each_tokens_clipped_policy_term(tiny, cap, ratio_kind, agg, low, high):
    rng = np.random.default_rng(1)
    temperature = 0.8
    logp, old, sample, adv, batch = _rows(tiny, rng, temperature)
    cfg = _config(tis_cap=cap, clip_eps_low=low, clip_eps_high=high, importance_ratio=ratio_kind, loss_agg=agg,
                  temperature=temperature, kl_coef=0.0, max_new_tokens=6)
    batch = weigh_tokens(cfg, batch)
    _, sums = policy_gradient(tiny.graphdef, cfg, False)(tiny.params, batch)
    lengths = tiny.w.sum(axis=1)
    rows, tokens = int((lengths > 0).sum()), tiny.w.sum()
    want, clipped, weights = 0.0, 0, []
    for r, t in zip(*np.nonzero(tiny.w)):
        on = np.nonzero(tiny.w[r])[0]
        seq = math.exp(sum(logp[r, u] - old[r, u] for u in on) / len(on))
        term, cut = _clipped_term(seq if ratio_kind == "sequence" else math.exp(logp[r, t] - old[r, t]), adv[r, t], low, high)
        weight = min(math.exp(old[r, t] - sample[r, t]), cap) if cap > 0 else 1.0  # TIS: min(p_train / p_sampler, cap)
        # rl.loss_agg as a weight on the token sum that the objective's caller divides by the token count
        agg_w = {"token_mean": 1.0, "sequence_mean": tokens / (rows * lengths[r]), "constant": tokens / (rows * 6)}[agg]
        want += agg_w * weight * term
        clipped += cut
        weights.append(weight)
    if cap == 1.5:
        assert 0 < np.mean(np.asarray(weights) == 1.5) < 1  # some tokens capped, some not
    np.testing.assert_allclose(float(sums["policy_loss_sum"]), want, rtol=1e-4, atol=1e-4)
    assert float(sums["clipfrac_sum"]) == clipped  # the weights scale the terms, never which are clipped
    assert float(sums["count"]) == tiny.w.sum()
    # |ratio - 1| of the current policy to the old one, summed over the completion tokens.
    np.testing.assert_allclose(float(sums["ratio_dev_sum"]), np.sum(np.abs(np.exp(logp - old) - 1) * tiny.w), rtol=1e-4)


@pytest.mark.parametrize("task", ["ppo", "grpo"])
@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_the_kl_to_the_reference_is_in_the_loss_only_with_kl_in_loss(tiny, task, kl_in):
    rng = np.random.default_rng(2)
    logp, old, _, adv, batch = _rows(tiny, rng, 1.0)
    ref = tiny.logp(tiny.ref)
    batch |= {"ref_logp": jnp.asarray(ref, jnp.float32)}
    if task == "ppo":
        batch |= {"old_values": jnp.asarray(rng.normal(size=ref.shape), jnp.float32), "returns": jnp.asarray(rng.normal(size=ref.shape), jnp.float32)}
    cfg = _config(task, kl_in=kl_in, kl_coef=0.3, kl_estimator="k3", vf_coef=0.1)
    loss, sums = policy_gradient(tiny.graphdef, cfg, task == "ppo")(tiny.params, batch)
    rest = float(sums["policy_loss_sum"]) + (0.1 * float(sums["value_loss_sum"]) if task == "ppo" else 0.0)
    k3 = sum(math.exp(ref[r, t] - logp[r, t]) - 1 - (ref[r, t] - logp[r, t]) for r, t in zip(*np.nonzero(tiny.w)))
    assert k3 > 0.1
    np.testing.assert_allclose(float(loss) - rest, 0.3 * k3 if kl_in == "loss" else 0.0, rtol=1e-4, atol=1e-5)


def test_value_warmup_rows_train_the_value_head_alone(tiny):
    rng = np.random.default_rng(3)
    _, _, _, _, batch = _rows(tiny, rng, 1.0)
    old_v = rng.normal(size=tiny.w.shape)
    returns = rng.normal(size=tiny.w.shape)
    batch |= {"old_values": jnp.asarray(old_v, jnp.float32), "returns": jnp.asarray(returns, jnp.float32),
              "ref_logp": jnp.asarray(tiny.logp(tiny.ref), jnp.float32), "policy_on": jnp.zeros(8, jnp.float32)}
    cfg = _config("ppo", kl_in="loss", kl_coef=0.5, vf_coef=0.1, value_clip_eps=0.2)
    grads, sums = jax.grad(lambda p: policy_gradient(tiny.graphdef, cfg, True)(p, batch), has_aux=True)(tiny.params)
    assert float(sums["policy_loss_sum"]) == 0.0
    np.testing.assert_allclose(float(sums["loss_sum"]), 0.1 * float(sums["value_loss_sum"]), rtol=1e-6)  # nor any KL term
    trunk = {k: v for k, v in grads.items() if k != "score_head"}
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(trunk))  # the policy gets no gradient at all
    # The head's gradient, by hand: V = h·u, loss 0.5·max((V - R)², (V_clip - R)²), V_clip = old_V + clip(V - old_V, ±0.2).
    h = tiny.hidden(tiny.params)
    u = np.asarray(tiny.params["score_head"], np.float64)
    want = np.zeros_like(u)
    for r, t in zip(*np.nonzero(tiny.w)):
        v = h[r, t] @ u
        v_clip = old_v[r, t] + min(max(v - old_v[r, t], -0.2), 0.2)
        if (v_clip - returns[r, t]) ** 2 > (v - returns[r, t]) ** 2:
            want += (v_clip - returns[r, t]) * h[r, t] * (abs(v - old_v[r, t]) < 0.2)
        else:
            want += (v - returns[r, t]) * h[r, t]
    np.testing.assert_allclose(np.asarray(grads["score_head"]), 0.1 * want, rtol=1e-4, atol=1e-5)
    # Rows with policy_on 1 train the policy again.
    grads_on, _ = jax.grad(lambda p: policy_gradient(tiny.graphdef, cfg, True)(p, batch | {"policy_on": jnp.ones(8)}), has_aux=True)(tiny.params)
    assert float(jnp.max(jnp.abs(grads_on["lm_head"]))) > 0
