"""PPO/GRPO math against plain-python / float64 numpy re-derivations on random masked batches."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import jax

from maxlm.losses.rl import (
    AdaptiveKLController,
    FixedKLController,
    aggregation_weights,
    clipped_surrogate,
    entropy_from_logits,
    gae,
    group_advantages,
    importance_ratio,
    kl_penalty,
    overlong_penalty,
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
    # DAPO's clip-higher: [1 - 0.2, 1 + 0.28], token by token; and per-token loss weights.
    weights = rng.uniform(0.5, 2.0, (B, T)) * mask
    want_sum, want_clip = 0.0, 0
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                r = float(np.exp(np.float64(new[b, t]) - old[b, t]))
                a = float(adv[b, t])
                unclipped, clipped = -a * r, -a * min(max(r, 0.8), 1.28)
                want_sum += weights[b, t] * max(unclipped, clipped)
                want_clip += clipped > unclipped
    got = ppo_policy_loss(*map(jnp.asarray, (new, old, adv, mask)), 0.2, 0.28, "token", jnp.asarray(weights, jnp.float32))
    np.testing.assert_allclose(float(got[0]), want_sum, rtol=RTOL)
    assert float(got[1]) == mask.sum() and float(got[2]) == want_clip != float(clip_sum)


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
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(rewards), G, scale="none")), centered.reshape(-1), atol=1e-7)
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


def test_every_advantage_and_reward_scale_matches_plain_loops():
    rng = np.random.default_rng(4)
    G, n = 4, 5
    rewards = np.round(rng.normal(size=n * G), 2).astype(np.float32)
    rewards[4:8] = 0.5  # a group of equal rewards
    r = rewards.astype(np.float64)

    def std(xs):  # unbiased, by hand
        m = sum(xs) / len(xs)
        return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5

    groups = [list(r[g * G:(g + 1) * G]) for g in range(n)]
    for kind in ("group", "rloo"):
        for scale in ("group", "batch", "none"):
            want = []
            for g, xs in enumerate(groups):
                for i, x in enumerate(xs):
                    others = [xs[j] for j in range(G) if j != i]
                    a = x - (sum(others) / len(others) if kind == "rloo" else sum(xs) / G)
                    if scale != "none":
                        a /= (std(xs) if scale == "group" else std(list(r))) + 1e-6
                    want.append(a)
            got = group_advantages(jnp.asarray(rewards), G, kind, scale)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6, err_msg=f"{kind} {scale}")
            assert np.all(np.asarray(got)[4:8] == 0.0)  # equal rewards: exactly 0
    centred = [x - sum(xs) / G for xs in groups for x in xs]
    want = [c / (std(centred) + 1e-6) for c in centred]
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(rewards), G, "reinforce_pp")), want, rtol=1e-5, atol=1e-6)
    # reinforce_pp's batch std is of the centred rewards, not of the rewards (TRL's scale_rewards="batch")
    assert not np.allclose(np.asarray(group_advantages(jnp.asarray(rewards), G, "group", "batch")), want, rtol=1e-3)
    with pytest.raises(ValueError, match="group, rloo, reinforce_pp"):
        group_advantages(jnp.asarray(rewards), G, "ppo")


def test_default_advantages_are_todays_bit_for_bit():
    """rl.advantage=group x rl.scale_rewards=group is the formula GRPO used before the menu existed."""
    rewards = np.random.default_rng(5).integers(0, 3, 32).astype(np.float32) / 2
    r_NxG = rewards.reshape(-1, 8)
    centered = r_NxG - jnp.mean(r_NxG, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.sum(jnp.square(centered), axis=-1, keepdims=True) / 7)
    np.testing.assert_array_equal(np.asarray(group_advantages(rewards, 8)), np.asarray(centered / (std + 1e-6)).reshape(-1))


def test_valid_rows_alone_make_the_batch_std_and_the_rest_get_zero():
    """valid_B (dynamic sampling's padding groups, inside the jitted step): the same advantages as on the valid rows alone."""
    G = 4
    rewards = np.random.default_rng(6).normal(size=6 * G).astype(np.float32)
    valid = np.repeat([1, 0, 1, 1, 0, 1], G).astype(np.float32)
    kept = [float(x) for x, v in zip(rewards, valid) if v]

    def std(xs):  # unbiased, by hand
        m = sum(xs) / len(xs)
        return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5

    groups = [kept[i:i + G] for i in range(0, len(kept), G)]
    centred = [x - sum(xs) / G for xs in groups for x in xs]
    for kind, scale, want in [
        ("group", "batch", [(x - sum(xs) / G) / (std(kept) + 1e-6) for xs in groups for x in xs]),
        ("reinforce_pp", "group", [c / (std(centred) + 1e-6) for c in centred]),
        ("rloo", "group", [(x - (sum(xs) - x) / (G - 1)) / (std(xs) + 1e-6) for xs in groups for x in xs]),
    ]:
        got = np.asarray(group_advantages(jnp.asarray(rewards), G, kind, scale, valid_B=jnp.asarray(valid)))
        assert np.all(got[valid == 0] == 0.0), kind
        np.testing.assert_allclose(got[valid > 0], want, rtol=1e-5, atol=1e-6, err_msg=kind)
    # every row valid: the advantages of no mask
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(rewards), G, "group", "batch", valid_B=jnp.ones(6 * G))),
                               np.asarray(group_advantages(jnp.asarray(rewards), G, "group", "batch")), rtol=1e-6, atol=1e-7)


def test_gspo_sequence_ratio_value_and_per_token_gradient(batch):
    rng, mask, B, T = batch
    old = rng.normal(-2, 1, (B, T)).astype(np.float32)
    new = (old + rng.normal(0, 0.1, (B, T))).astype(np.float32)
    adv_B = np.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0], np.float32)  # both signs: the clip cuts one side each
    adv = np.repeat(adv_B[:, None], T, axis=1) * mask
    low, high = 0.03, 0.04
    s = np.ones(B)
    for b in range(B):
        idx = [t for t in range(T) if mask[b, t]]
        if idx:
            s[b] = np.exp(sum(float(new[b, t]) - float(old[b, t]) for t in idx) / len(idx))
    ratio = importance_ratio(jnp.asarray(new), jnp.asarray(old), jnp.asarray(mask), "sequence")
    np.testing.assert_allclose(np.asarray(ratio) * mask, s[:, None] * mask, rtol=1e-5)

    def loss(logp):
        r = importance_ratio(logp, jnp.asarray(old), jnp.asarray(mask), "sequence")
        return jnp.sum(clipped_surrogate(r, jnp.asarray(adv), low, high)[0] * mask)

    grad = np.asarray(jax.grad(loss)(jnp.asarray(new)))
    # GSPO's gradient, token by token: -A·s·∇logp_t where the sequence ratio is inside the clip range
    # (or outside on the side that does not help), 0 where the clip cuts it.
    want, cut_rows = np.zeros((B, T)), 0
    for b in range(B):
        cut = (adv_B[b] > 0 and s[b] > 1 + high) or (adv_B[b] < 0 and s[b] < 1 - low)
        cut_rows += bool(cut and mask[b].sum())
        for t in range(T):
            if mask[b, t] and not cut:
                want[b, t] = -adv_B[b] * s[b]
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
    assert cut_rows and np.any(want != 0)  # both cases occur


def test_aggregation_weights_give_each_mean_and_add_up_over_microbatches(batch):
    rng, mask, B, T = batch
    mask[3] = 0  # a padding row (no completion)
    x = rng.normal(size=(B, T)).astype(np.float32)
    N = T + 3
    rows = [b for b in range(B) if mask[b].sum()]
    token_mean = sum(x[b, t] for b in rows for t in range(T) if mask[b, t]) / mask.sum()
    sequence_mean = sum(sum(x[b, t] for t in range(T) if mask[b, t]) / mask[b].sum() for b in rows) / len(rows)
    constant = sum(x[b, t] for b in rows for t in range(T) if mask[b, t]) / (len(rows) * N)
    for kind, want in [("token_mean", token_mean), ("sequence_mean", sequence_mean), ("constant", constant)]:
        w = np.asarray(aggregation_weights(jnp.asarray(mask), kind, N))
        assert np.all(w[mask == 0] == 0)
        np.testing.assert_allclose((w * x).sum() / mask.sum(), want, rtol=1e-5, err_msg=kind)
        # train_step's accumulation: sums over two microbatches, divided by the total count
        halves = [slice(0, 3), slice(3, B)]
        accumulated = sum((w[h] * x[h]).sum() for h in halves) / sum(mask[h].sum() for h in halves)
        np.testing.assert_allclose(accumulated, want, rtol=1e-5, err_msg=kind)
    # weights computed per microbatch would not give the batch's sequence mean
    per_micro = [np.asarray(aggregation_weights(jnp.asarray(mask[h]), "sequence_mean", N)) for h in halves]
    assert abs(sum((pw * x[h]).sum() for pw, h in zip(per_micro, halves)) / mask.sum() - sequence_mean) > 1e-3


def test_overlong_penalty_by_hand():
    lengths = np.array([1, 6, 7, 8, 10, 10])
    got = np.asarray(overlong_penalty(lengths, 10, 4, 0.5))
    # no penalty up to 10 - 4 = 6 tokens, then 0.5 x (L - 6) / 4, up to 0.5 at the full budget
    np.testing.assert_allclose(got, [0, 0, 0.125, 0.25, 0.5, 0.5], rtol=1e-6)
    assert np.all(np.asarray(overlong_penalty(lengths, 10, 0, 1.0)) == 0)
