"""PPO/GRPO math against plain-python / float64 numpy re-derivations on random masked batches."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.losses.rl import (
    AdaptiveKLController,
    FixedKLController,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_penalty,
    ppo_policy_loss,
    ppo_value_loss,
    tis_weights,
    token_rewards,
    whiten,
)

RTOL = 1e-5


def right_padded_mask(rng, B, T):
    """[B, T] 0/1 responses of random lengths 0..T (right padding), as rollouts produce."""
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T  # one full-length row: no successor past the last column
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    B, T = 6, 9
    mask = right_padded_mask(rng, B, T)
    return rng, mask, B, T


def gae_loop(rewards, values, mask, gamma, lam):
    """GAE per row in plain python: an episode is the row's response tokens; no bootstrap past them."""
    B, T = rewards.shape
    adv, ret = np.zeros((B, T)), np.zeros((B, T))
    for b in range(B):
        steps = [t for t in range(T) if mask[b, t]]
        last = 0.0
        for j in reversed(range(len(steps))):
            t = steps[j]
            next_value = values[b, steps[j + 1]] if j + 1 < len(steps) else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            last = delta + gamma * lam * last
            adv[b, t], ret[b, t] = last, last + values[b, t]
    return adv, ret


def test_gae_matches_python_loop(batch):
    rng, mask, B, T = batch
    mask[1] = 0
    mask[1, 3:7] = 1  # a response that starts late and ends early
    rewards = rng.normal(size=(B, T)).astype(np.float32)
    # Garbage values/rewards on padding must not leak in.
    values = rng.normal(size=(B, T)).astype(np.float32) * 5
    for gamma, lam in [(1.0, 0.95), (0.99, 0.9), (0.9, 0.0)]:
        adv, ret = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma, lam)
        want_adv, want_ret = gae_loop(rewards.astype(np.float64), values.astype(np.float64), mask, gamma, lam)
        np.testing.assert_allclose(np.asarray(adv), want_adv, rtol=RTOL, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ret), want_ret, rtol=RTOL, atol=1e-5)


def test_whiten_masked(batch):
    rng, mask, B, T = batch
    x = (rng.normal(size=(B, T)) * 3 + 2).astype(np.float32)
    sel = x[mask > 0].astype(np.float64)
    mean, var = sel.mean(), sel.var(ddof=1)
    want = (x - mean) / np.sqrt(var + 1e-8) * mask
    np.testing.assert_allclose(np.asarray(whiten(jnp.asarray(x), jnp.asarray(mask))), want, rtol=RTOL, atol=1e-5)
    got_keep = np.asarray(whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=False))
    np.testing.assert_allclose(got_keep, (want + mean) * mask, rtol=RTOL, atol=1e-5)
    w = np.asarray(whiten(jnp.asarray(x), jnp.asarray(mask)))[mask > 0]
    np.testing.assert_allclose([w.mean(), w.std(ddof=1)], [0.0, 1.0], atol=1e-5)


def test_ppo_policy_loss_matches_numpy(batch):
    rng, mask, B, T = batch
    old = rng.normal(-2, 1, (B, T)).astype(np.float32)
    new = (old + rng.normal(0, 0.3, (B, T))).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    eps = 0.2
    ratio = np.exp(new.astype(np.float64) - old)
    l1, l2 = -adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps)
    loss_sum, count, clip_sum = ppo_policy_loss(*map(jnp.asarray, (new, old, adv, mask)), eps)
    np.testing.assert_allclose(float(loss_sum), (np.maximum(l1, l2) * mask).sum(), rtol=RTOL)
    assert float(count) == mask.sum()
    assert float(clip_sum) == ((l2 > l1) * mask).sum() > 0


def test_ppo_value_loss_matches_numpy(batch):
    rng, mask, B, T = batch
    old_v = rng.normal(size=(B, T)).astype(np.float32)
    v = (old_v + rng.normal(0, 0.5, (B, T))).astype(np.float32)
    ret = rng.normal(size=(B, T)).astype(np.float32)
    eps = 0.2
    v64 = v.astype(np.float64)
    l1 = (v64 - ret) ** 2
    l2 = (np.clip(v64, old_v - eps, old_v + eps) - ret) ** 2
    loss_sum, count, clip_sum = ppo_value_loss(*map(jnp.asarray, (v, old_v, ret, mask)), eps)
    np.testing.assert_allclose(float(loss_sum), (0.5 * np.maximum(l1, l2) * mask).sum(), rtol=RTOL)
    assert float(count) == mask.sum()
    assert float(clip_sum) == ((l2 > l1) * mask).sum() > 0


def test_kl_estimators_match_numpy():
    rng = np.random.default_rng(1)
    logp = rng.normal(-3, 1, (4, 5)).astype(np.float32)
    ref = (logp + rng.normal(0, 0.5, (4, 5))).astype(np.float32)
    r = ref.astype(np.float64) - logp
    want = {"k1": -r, "k3": np.exp(r) - 1 - r, "abs": np.abs(r), "mse": 0.5 * r**2}
    for kind, w in want.items():
        np.testing.assert_allclose(np.asarray(kl_penalty(jnp.asarray(logp), jnp.asarray(ref), kind)), w, rtol=RTOL, atol=1e-7)
    assert np.all(np.asarray(kl_penalty(jnp.asarray(logp), jnp.asarray(ref), "k3")) >= 0)
    with pytest.raises(ValueError, match="k1, k3, abs, mse"):
        kl_penalty(jnp.asarray(logp), jnp.asarray(ref), "k2")


def test_token_rewards_put_score_on_last_token(batch):
    rng, mask, B, T = batch
    mask[1] = 0  # an empty response gets nothing
    mask[2, :] = 0
    mask[2, 2:5] = 1  # and a response that starts late (left padding)
    kl = rng.normal(size=(B, T)).astype(np.float32)
    score = rng.normal(size=B).astype(np.float32)
    want = -0.05 * kl.astype(np.float64) * mask
    for b in range(B):
        idx = np.nonzero(mask[b])[0]
        if len(idx):
            want[b, idx[-1]] += score[b]
    got = token_rewards(jnp.asarray(score), jnp.asarray(kl), jnp.asarray(mask), 0.05)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-7)


def test_entropy_from_logits():
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(2, 3, 11)) * 4).astype(np.float32)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = -(p * np.log(p)).sum(-1)
    assert entropy_from_logits(jnp.asarray(logits, jnp.bfloat16)).dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(entropy_from_logits(jnp.asarray(logits))), want, rtol=1e-5, atol=1e-6)
    uniform = entropy_from_logits(jnp.zeros((1, 1, 7), jnp.bfloat16))
    np.testing.assert_allclose(np.asarray(uniform), [[np.log(7)]], rtol=1e-6)


def test_group_advantages_match_numpy():
    rng = np.random.default_rng(3)
    G = 4
    rewards = rng.integers(0, 2, 12).astype(np.float32)
    rewards[:G] = 1.0  # a group of equal rewards: advantage 0, not nan
    grouped = rewards.reshape(-1, G).astype(np.float64)
    centered = grouped - grouped.mean(-1, keepdims=True)
    want = (centered / (grouped.std(-1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(rewards), G)), want, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(rewards), G, scale=False)), centered.reshape(-1), atol=1e-7)
    np.testing.assert_array_equal(np.asarray(group_advantages(jnp.asarray(rewards), 1)), np.zeros(12))
    with pytest.raises(ValueError, match="groups of 5"):
        group_advantages(jnp.asarray(rewards), 5)


def test_kl_controllers_by_hand():
    ctl = AdaptiveKLController(coef=0.2, target=6.0, horizon=10000)
    # kl 9 -> error 0.5, clipped to 0.2: 0.2 * (1 + 0.2 * 256 / 10000) = 0.201024
    assert ctl.update(9.0, 256) == pytest.approx(0.201024, rel=1e-12)
    # kl 5.4 -> error -0.1: 0.2 * (1 - 0.1 * 512 / 10000) = 0.198976
    assert ctl.update(5.4, 512) == pytest.approx(0.198976, rel=1e-12)
    # kl 0 -> error -1, clipped to -0.2: 0.2 * (1 - 0.2 * 100 / 10000) = 0.1996
    assert ctl.update(0.0, 100) == pytest.approx(0.1996, rel=1e-12)
    assert ctl.coef == 0.2  # pure: the controller is unchanged
    ctl = dataclasses.replace(ctl, coef=ctl.update(9.0, 256))
    assert ctl.coef == pytest.approx(0.201024)
    assert FixedKLController(coef=0.05).update(100.0, 256) == 0.05


def test_tis_weights_are_the_capped_ratio_of_training_to_sampler_probabilities():
    rng = np.random.default_rng(7)
    old = -rng.exponential(2.0, (3, 9))
    sample = -rng.exponential(2.0, (3, 9))
    sample[0, 0], old[0, 0] = -200.0, -0.1  # a ratio of e^199.9: capped, not inf
    got = np.asarray(tis_weights(jnp.asarray(old, jnp.float32), jnp.asarray(sample, jnp.float32), 2.0))
    for b in range(3):
        for t in range(9):
            assert got[b, t] == pytest.approx(min(np.exp(old[b, t] - sample[b, t]), 2.0), rel=1e-5)
    assert got[0, 0] == pytest.approx(2.0)
