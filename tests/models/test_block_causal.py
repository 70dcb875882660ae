"""Block-skipping causal attention against a numpy re-derivation and jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.models.block_causal import block_count, block_causal_attention
from maxlm.models.layers import sliding_window_mask
from maxlm.models.llama import causal_segment_mask


def numpy_attention(q, k, v, mask):
    """Returns masked softmax attention with grouped kv heads, in float64."""
    b, t, n, h = q.shape
    g = n // k.shape[2]
    k = np.repeat(k, g, axis=2).astype(np.float64)
    v = np.repeat(v, g, axis=2).astype(np.float64)
    s = np.einsum("btnh,bsnh->bnts", q.astype(np.float64), k) / np.sqrt(h)
    s = np.where(mask[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


def inputs(t, n=4, kh=2, h=16, b=3, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, h)).astype(np.float32)
    k = rng.standard_normal((b, t, kh, h)).astype(np.float32)
    v = rng.standard_normal((b, t, kh, h)).astype(np.float32)
    # Packed rows: documents of random lengths, and a padded tail (segment 0) in row 0.
    seg = np.cumsum(rng.random((b, t)) < 0.05, axis=1).astype(np.int32) + 1
    seg[0, -7:] = 0
    return q, k, v, seg


def test_block_count():
    assert [block_count(t) for t in (1, 63, 100, 128, 192, 256, 1024, 4096, 4100)] == [1, 1, 1, 2, 3, 4, 8, 8, 5]


@pytest.mark.parametrize("t, window", [(40, 0), (128, 0), (320, 0), (320, 50), (320, 64), (256, 1)])
def test_matches_numpy_over_packed_rows(t, window):
    q, k, v, seg = inputs(t)
    mask = causal_segment_mask(jnp.asarray(seg))
    if window:  # the band the window leaves; blocks then skip the keys behind it as well
        mask = mask & sliding_window_mask(t, t, 0, window)
    out = block_causal_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, window)
    np.testing.assert_allclose(np.asarray(out), numpy_attention(q, k, v, np.asarray(mask)), atol=2e-5, rtol=1e-4)


def test_gradients_match_jax_attention():
    q, k, v, seg = inputs(192, n=6, kh=2, b=2)
    mask = causal_segment_mask(jnp.asarray(seg))
    w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape).astype(np.float32))

    def loss(attend):
        return jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v) * w), argnums=(0, 1, 2))(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))

    ours = loss(lambda q, k, v: block_causal_attention(q, k, v, mask))
    ref = loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla"))
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-4, rtol=1e-4)


def test_bfloat16_follows_the_float32_result():
    q, k, v, seg = inputs(128, b=2)
    mask = causal_segment_mask(jnp.asarray(seg))
    as_bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    out = jax.jit(block_causal_attention)(*as_bf16, mask)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), numpy_attention(q, k, v, np.asarray(mask)), atol=5e-2)
    grads = jax.grad(lambda q, k, v: jnp.sum(block_causal_attention(q, k, v, mask).astype(jnp.float32)), argnums=(0, 1, 2))(*as_bf16)
    assert all(g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g))) for g in grads)
