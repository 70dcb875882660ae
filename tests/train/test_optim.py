"""Schedules and the weight-decay mask."""

import jax.numpy as jnp
import pytest

from maxlm.config import TrainConfig
from maxlm.train.optim import decay_mask, schedule


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
