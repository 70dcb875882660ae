"""Preference and reward-model losses against float64 numpy re-derivations of TRL's published
formulas, and against TRL's own code where trl is installed."""

from collections import defaultdict
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.losses.logprobs import sequence_logps
from maxlm.losses.preference import PREFERENCE_KINDS, preference_loss, reward_loss

B = 8
BETA = 0.2
GAMMA = 0.7
RTOL, ATOL = 1e-5, 1e-6


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def f32(x):
    """Rounds to f32 and back, so numpy (f64) and jax (f32) see the same inputs."""
    return np.asarray(x, np.float32).astype(np.float64)


@pytest.fixture(scope="module")
def pairs():
    """Random summed log-probs of chosen/rejected completions, reference ones, token counts."""
    rng = np.random.default_rng(0)
    n_c, n_r = rng.integers(1, 40, B).astype(np.float64), rng.integers(1, 40, B).astype(np.float64)
    # Per-token averages in (-3, -0.01): ORPO's log(1 - p) needs p < 1.
    c, r = f32(-rng.uniform(0.01, 3, B) * n_c), f32(-rng.uniform(0.01, 3, B) * n_r)
    rc, rr = f32(c + rng.normal(0, 3, B)), f32(r + rng.normal(0, 3, B))
    return SimpleNamespace(c=c, r=r, rc=rc, rr=rr, n_c=n_c, n_r=n_r)


def numpy_loss(p, kind, ls=0.0):
    """TRL's formulas (DPOTrainer, CPOTrainer, ORPOTrainer), re-derived in float64."""
    z = (p.c - p.rc) - (p.r - p.rr)
    avg_c, avg_r = p.c / p.n_c, p.r / p.n_r
    if kind == "sigmoid":
        return -(1 - ls) * log_sigmoid(BETA * z) - ls * log_sigmoid(-BETA * z)
    if kind == "hinge":
        return np.maximum(0.0, 1 - BETA * z)
    if kind == "ipo":
        return ((p.c - p.rc) / p.n_c - (p.r - p.rr) / p.n_r - 1 / (2 * BETA)) ** 2
    if kind == "simpo":
        u = BETA * (avg_c - avg_r) - GAMMA
        return -(1 - ls) * log_sigmoid(u) - ls * log_sigmoid(-u)
    if kind == "orpo":
        log_odds = (avg_c - avg_r) - (np.log(-np.expm1(avg_c)) - np.log(-np.expm1(avg_r)))
        return -BETA * log_sigmoid(log_odds)
    raise AssertionError(kind)


def ours(p, kind, ls=0.0, **kw):
    refs = (jnp.asarray(p.rc, jnp.float32), jnp.asarray(p.rr, jnp.float32)) if kind in ("sigmoid", "ipo", "hinge") else (None, None)
    return preference_loss(
        jnp.asarray(p.c, jnp.float32), jnp.asarray(p.r, jnp.float32), *refs,
        kind=kind, beta=BETA, label_smoothing=ls, gamma=GAMMA,
        chosen_count=jnp.asarray(p.n_c), rejected_count=jnp.asarray(p.n_r), **kw,
    )


@pytest.mark.parametrize("kind,ls", [(k, 0.0) for k in PREFERENCE_KINDS] + [("sigmoid", 0.2), ("simpo", 0.1)])
def test_each_kind_matches_numpy(pairs, kind, ls):
    out = ours(pairs, kind, ls)
    assert out.loss_B.dtype == jnp.float32 and out.loss_B.shape == (B,)
    np.testing.assert_allclose(np.asarray(out.loss_B), numpy_loss(pairs, kind, ls), rtol=RTOL, atol=ATOL)
    if kind in ("simpo", "orpo"):
        want_c, want_r = BETA * pairs.c / pairs.n_c, BETA * pairs.r / pairs.n_r
    else:
        want_c, want_r = BETA * (pairs.c - pairs.rc), BETA * (pairs.r - pairs.rr)
    np.testing.assert_allclose(np.asarray(out.chosen_rewards_B), want_c, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out.rejected_rewards_B), want_r, rtol=RTOL, atol=ATOL)


def test_cdpo_with_zero_smoothing_is_dpo(pairs):
    z = (pairs.c - pairs.rc) - (pairs.r - pairs.rr)
    np.testing.assert_array_equal(np.asarray(ours(pairs, "sigmoid", 0.0).loss_B), np.asarray(ours(pairs, "sigmoid").loss_B))
    np.testing.assert_allclose(np.asarray(ours(pairs, "sigmoid", 0.0).loss_B), -log_sigmoid(BETA * z), rtol=RTOL)
    assert not np.allclose(np.asarray(ours(pairs, "sigmoid", 0.1).loss_B), -log_sigmoid(BETA * z), rtol=1e-3)


def test_chosen_nll_is_added(pairs):
    nll = np.linspace(0.5, 2.0, B)
    got = np.asarray(ours(pairs, "orpo", chosen_nll=jnp.asarray(nll)).loss_B)
    np.testing.assert_allclose(got, numpy_loss(pairs, "orpo") + nll, rtol=RTOL)


def test_sequence_logps_sums_and_counts():
    rng = np.random.default_rng(1)
    lp = rng.normal(size=(3, 7)).astype(np.float32)
    mask = (rng.uniform(size=(3, 7)) > 0.4).astype(np.int32)
    s, n = sequence_logps(jnp.asarray(lp), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(s), (lp.astype(np.float64) * mask).sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(n), mask.sum(-1))


@pytest.mark.parametrize("kind", PREFERENCE_KINDS)
def test_gradients_finite_for_extreme_inputs(kind):
    # Log-ratio differences of ±1e4 and, for ORPO, average log-probs at 0 (p = 1) and far below.
    c = jnp.array([0.0, -1e4, -1e-9, -5.0], jnp.float32)
    r = jnp.array([-1e4, 0.0, -1e4, -1e-9], jnp.float32)
    refs = (jnp.zeros(4), jnp.zeros(4)) if kind in ("sigmoid", "ipo", "hinge") else (None, None)

    def total(c, r):
        out = preference_loss(c, r, *refs, kind=kind, beta=0.1, chosen_count=jnp.ones(4), rejected_count=jnp.ones(4))
        return jnp.sum(out.loss_B)

    value, grads = jax.value_and_grad(total, argnums=(0, 1))(c, r)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_reward_loss_matches_numpy_and_is_stable():
    rng = np.random.default_rng(2)
    rc, rr, m = f32(rng.normal(0, 2, B)), f32(rng.normal(0, 2, B)), f32(rng.uniform(0, 1, B))
    want = -log_sigmoid(rc - rr - m) + 0.01 * (rc + rr) ** 2
    np.testing.assert_allclose(np.asarray(reward_loss(jnp.asarray(rc), jnp.asarray(rr), jnp.asarray(m), 0.01)), want, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(reward_loss(jnp.asarray(rc), jnp.asarray(rr))), -log_sigmoid(rc - rr), rtol=RTOL)
    grads = jax.grad(lambda a, b: jnp.sum(reward_loss(a, b)), argnums=(0, 1))(jnp.array([1e4, -1e4]), jnp.array([-1e4, 1e4]))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    np.testing.assert_allclose(np.asarray(reward_loss(jnp.array([-1e4]), jnp.array([0.0]))), [1e4], rtol=1e-6)


def test_errors_name_the_problem(pairs):
    c = jnp.asarray(pairs.c, jnp.float32)
    with pytest.raises(ValueError, match="valid kinds: sigmoid, ipo, hinge, simpo, orpo"):
        preference_loss(c, c, c, c, kind="kto")
    with pytest.raises(ValueError, match="needs ref_chosen_logps"):
        preference_loss(c, c, kind="sigmoid")
    with pytest.raises(ValueError, match="reference-free"):
        preference_loss(c, c, c, c, kind="simpo", chosen_count=c, rejected_count=c)
    with pytest.raises(ValueError, match="chosen_count"):
        preference_loss(c, c, c, c, kind="ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(c, c, c, c, kind="hinge", label_smoothing=0.1)


# ---- Against TRL's own code: its loss methods called on a stub `self` (no model, no trainer) ----


@pytest.fixture(scope="module")
def trl():
    return pytest.importorskip("trl")


def stub_self(**attrs):
    import torch

    accel = SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    base = dict(model=SimpleNamespace(training=True), accelerator=accel, _tp_size=1, _total_train_tokens=0,
                _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    return SimpleNamespace(**base, **attrs)


def trl_dpo_loss(p, i, kind):
    """TRL DPOTrainer._compute_loss on pair i: a fake model whose per-token log-probs sum to p.c[i], p.r[i]."""
    import torch
    from trl.trainer.dpo_trainer import DPOTrainer

    n = [int(p.n_c[i]), int(p.n_r[i])]
    T = max(n) + 1  # column 0 is the prompt
    completion_mask = torch.zeros(2, T, dtype=torch.long)
    log_probs = torch.zeros(2, T - 1, dtype=torch.float64)
    for row, (total, k) in enumerate(zip((p.c[i], p.r[i]), n)):
        completion_mask[row, 1 : k + 1] = 1
        log_probs[row, :k] = total / k
    zeros = torch.zeros(2, T - 1, dtype=torch.float64)
    outputs = SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    self = stub_self(aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                     loss_types=[kind], loss_weights=[1.0], beta=BETA, label_smoothing=0.0, use_weighting=False)
    inputs = {"input_ids": torch.zeros(2, T, dtype=torch.long), "attention_mask": torch.ones(2, T, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": torch.tensor([p.rc[i]], dtype=torch.float64),
              "ref_rejected_logps": torch.tensor([p.rr[i]], dtype=torch.float64)}
    return float(DPOTrainer._compute_loss(self, lambda **kw: outputs, inputs, return_outputs=False))


@pytest.mark.parametrize("kind", ["sigmoid", "hinge", "ipo"])
def test_dpo_kinds_match_trl(trl, pairs, kind):
    want = [trl_dpo_loss(pairs, i, kind) for i in range(B)]
    np.testing.assert_allclose(np.asarray(ours(pairs, kind).loss_B), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind,ls", [("sigmoid", 0.2), ("simpo", 0.0), ("simpo", 0.1)])
def test_conservative_and_simpo_match_trl_cpo(trl, pairs, kind, ls):
    # TRL 1.x's DPOTrainer no longer applies label_smoothing to "sigmoid"; its CPOTrainer keeps the
    # conservative form -(1-ε)·log σ(β·z) - ε·log σ(-β·z), with z = chosen - rejected. Fed the
    # log-ratios, it is TRL 0.x's cDPO; fed per-token averages with loss_type="simpo", it is SimPO.
    import torch
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    self = stub_self(alpha=0.0, loss_type=kind, beta=BETA, label_smoothing=ls, simpo_gamma=GAMMA)
    if kind == "sigmoid":
        c, r = pairs.c - pairs.rc, pairs.r - pairs.rr
    else:
        c, r = pairs.c / pairs.n_c, pairs.r / pairs.n_r
    losses, chosen_rewards, _ = CPOTrainer.cpo_loss(self, torch.tensor(c), torch.tensor(r))
    out = ours(pairs, kind, ls)
    np.testing.assert_allclose(np.asarray(out.loss_B), losses.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out.chosen_rewards_B), chosen_rewards.numpy(), rtol=RTOL, atol=ATOL)


def test_orpo_matches_trl(trl, pairs):
    import torch
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    self = stub_self(beta=BETA)
    avg_c, avg_r = torch.tensor(pairs.c / pairs.n_c), torch.tensor(pairs.r / pairs.n_r)
    losses, chosen_rewards, rejected_rewards, _, _ = ORPOTrainer.odds_ratio_loss(self, avg_c, avg_r)
    out = ours(pairs, "orpo")
    # TRL returns β·log σ(log_odds) and subtracts its mean from the NLL: our per-pair loss is its negation.
    np.testing.assert_allclose(np.asarray(out.loss_B), -losses.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(out.rejected_rewards_B), rejected_rewards.numpy(), rtol=RTOL, atol=ATOL)


def test_reward_loss_matches_trl(trl):
    import torch
    from trl.trainer.reward_trainer import RewardTrainer

    rng = np.random.default_rng(3)
    rc, rr, m = f32(rng.normal(0, 2, B)), f32(rng.normal(0, 2, B)), f32(rng.uniform(0, 1, B))
    logits = torch.tensor(np.concatenate([rc, rr]))[:, None]
    self = stub_self(args=SimpleNamespace(center_rewards_coefficient=0.01))
    inputs = {"margin": torch.tensor(m), "attention_mask": torch.ones(2 * B, 3, dtype=torch.long)}
    want = float(RewardTrainer.compute_loss(self, lambda **kw: SimpleNamespace(logits=logits), inputs))
    got = float(jnp.mean(reward_loss(jnp.asarray(rc), jnp.asarray(rr), jnp.asarray(m), center_coef=0.01)))
    # TRL's centering term is a batch mean of squares: the mean of our per-pair losses is its loss.
    np.testing.assert_allclose(got, want, rtol=RTOL)
