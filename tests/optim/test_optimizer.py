"""Schedules, the weight-decay mask, and AdamW against optax.adamw."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maxlm.config import TrainConfig
from maxlm.optim.optimizer import decay_mask, optimizer, schedule


def test_cosine_warmup_and_floor():
    s = schedule(TrainConfig(steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1, schedule="cosine"))
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0)
    assert float(s(55)) == pytest.approx(0.55, abs=1e-3)  # cosine midpoint between 1.0 and 0.1
    assert float(s(100)) == pytest.approx(0.1)


def test_wsd_holds_then_decays():
    s = schedule(TrainConfig(steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2))
    assert float(s(10)) == pytest.approx(1.0) and float(s(79)) == pytest.approx(1.0)
    assert float(s(90)) == pytest.approx(0.5) and float(s(100)) == pytest.approx(0.0)


def test_decay_mask_skips_norms_and_biases():
    params = {"embed": jnp.ones((4, 2)), "layers": {"attn_norm": {"scale": jnp.ones((2, 2))}, "attn": {"q": jnp.ones((2, 2, 2)), "q_bias": jnp.ones((2, 2))}}}
    m = decay_mask(params)
    assert m["embed"] and m["layers"]["attn"]["q"]
    assert not m["layers"]["attn_norm"]["scale"] and not m["layers"]["attn"]["q_bias"]


def _params():
    rng = np.random.default_rng(0)
    return {"embed": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32), "final_norm": {"scale": jnp.ones((4,), jnp.float32)},
            "layers": {"attn": {"q": jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)}}}


def test_adamw_equals_optax_adamw_with_clipping_schedule_and_mask():
    cfg = TrainConfig(steps=20, warmup_steps=3, learning_rate=0.1, weight_decay=0.3, grad_clip=0.5)
    ours = optimizer(cfg)
    ref = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
    p_a = p_b = _params()
    s_a, s_b = ours.init(p_a), ref.init(p_b)
    rng = np.random.default_rng(1)
    for _ in range(6):
        g = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), p_a)
        u_a, s_a = ours.update(g, s_a, p_a)
        u_b, s_b = ref.update(g, s_b, p_b)
        p_a, p_b = optax.apply_updates(p_a, u_a), optax.apply_updates(p_b, u_b)
    chex.assert_trees_all_close(p_a, p_b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(p_a["embed"]), np.asarray(_params()["embed"]))


def test_adamw_not_finite_changes_nothing():
    tx = optimizer(TrainConfig(steps=20, warmup_steps=0, learning_rate=0.1))
    params = _params()
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(g, state, params)  # non-zero moments, count 1
    bad = jax.tree.map(lambda x: x * jnp.nan, g)
    updates, new_state = jax.jit(lambda g, s, p: tx.update(g, s, p, finite=jnp.bool_(False)))(bad, state, params)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    chex.assert_trees_all_equal(new_state, state)
