"""Decoder invariants: packing isolates documents, scan = unrolled = remat, shapes and heads."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maxlm.config import ModelConfig, RopeScalingConfig
from maxlm.models import params as params_lib
from maxlm.models.layers import rope_inv_freq
from maxlm.models.llama import Decoder

CFG = ModelConfig(vocab_size=101, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=64)
# Qwen3's switches: q/k norms, and a head_dim that is not hidden_size / num_heads (8).
QWEN3 = dataclasses.replace(CFG, family="qwen3", qk_norm=True, head_dim=12, tie_embeddings=True)
MISTRAL = dataclasses.replace(CFG, family="mistral", sliding_window=4)
# Gemma 3's switches with a 3-layer local, local, global pattern, its local RoPE base, and a final cap; Gemma 2 alternates, with both caps.
GEMMA = dict(sliding_window=4, query_pre_attn_scalar=6, post_norms=True, norm_offset=True, embed_scale=True, mlp_activation="gelu_tanh",
             tie_embeddings=True)
GEMMA2 = dataclasses.replace(CFG, family="gemma2", global_every=2, attn_softcap=1.0, final_softcap=2.0, **GEMMA)
# Qwen3-MoE's: 4 experts of width 24, top-2, not renormalized (models/moe.py).
QWEN3_MOE = dataclasses.replace(QWEN3, family="qwen3_moe", tie_embeddings=False, num_experts=4, experts_per_token=2, moe_mlp_dim=24,
                                router_renormalize=False)
GEMMA3 = dataclasses.replace(CFG, family="gemma3", num_layers=3, global_every=3, qk_norm=True, rope_local_theta=100.0, final_softcap=2.0, **GEMMA)


def test_packed_row_equals_documents_alone():
    model = Decoder(CFG, rngs=nnx.Rngs(0))
    a, b = jnp.arange(1, 6)[None], jnp.arange(20, 27)[None]
    packed = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], axis=1)
    seg = jnp.asarray([[1] * 5 + [2] * 7 + [0] * 3])
    pos = jnp.asarray([list(range(5)) + list(range(7)) + [0] * 3])
    out = model(packed, seg, pos)
    np.testing.assert_allclose(out[:, :5], model(a), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:12], model(b), atol=1e-5)


FAMILIES = {"llama": CFG, "qwen3": QWEN3, "mistral": MISTRAL, "gemma2": GEMMA2, "gemma3": GEMMA3}
CHANGES = [{"scan_layers": False}, {"remat": "full"}, {"remat": "dots_no_batch"}]


# MoE only unrolled: remat wraps the same layer body, and each case here costs several compiles.
@pytest.mark.parametrize("cfg, change", [pytest.param(c, ch, id=f"{name}-{next(iter(ch.items()))}") for name, c in FAMILIES.items() for ch in CHANGES]
                         + [pytest.param(QWEN3_MOE, {"scan_layers": False}, id="qwen3_moe-unrolled")])
def test_scan_unrolled_and_remat_agree(change, cfg):
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    ref = Decoder(cfg, rngs=nnx.Rngs(0))
    other = Decoder(dataclasses.replace(cfg, **change), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(ref(tokens), other(tokens), atol=1e-5)

    def loss(m):
        return jnp.mean(m(tokens) ** 2)

    g_ref = nnx.grad(loss)(ref)
    g_other = nnx.grad(loss)(other)
    for x, y in zip(jax.tree.leaves(nnx.state(g_ref)), jax.tree.leaves(nnx.state(g_other))):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_tied_qkv_bias_and_scalar_head_shapes():
    cfg = dataclasses.replace(CFG, tie_embeddings=True, qkv_bias=True, scalar_head=True)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    assert not hasattr(model, "lm_head") and model.layers.attn.q_bias[...].shape == (2, 4, 8)
    tokens = jnp.ones((3, 5), jnp.int32)
    h, _ = model.hidden(tokens, jnp.broadcast_to(jnp.arange(5), (3, 5)), jnp.ones((3, 5, 5), bool))
    chex.assert_shape(model.logits(h), (3, 5, 101))
    assert model.logits(h).dtype == jnp.float32
    chex.assert_shape(model.scores(h), (3, 5))


def test_qk_norm_scales_span_head_dim_and_every_param_names_its_axes():
    _, shapes, names = params_lib.abstract(QWEN3)
    attn = shapes["layers"]["attn"]
    assert attn["q"].shape == (2, 32, 4, 12) and attn["o"].shape == (2, 4, 12, 32)
    assert attn["q_norm"]["scale"].shape == attn["k_norm"]["scale"].shape == (2, 12)
    assert tuple(names["layers"]["attn"]["k_norm"]["scale"]) == ("layers", "head_dim")
    for s, n in zip(jax.tree.leaves(shapes), jax.tree.leaves(names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))):
        assert len(n) == len(s.shape) and all(isinstance(a, str) for a in n)
    assert "q_norm" not in params_lib.abstract(CFG)[1]["layers"]["attn"]
    _, shapes, names = params_lib.abstract(GEMMA3)
    assert tuple(names["layers"]["attn_post_norm"]["scale"]) == tuple(names["layers"]["mlp_post_norm"]["scale"]) == ("layers", "embed")
    assert shapes["layers"]["mlp_post_norm"]["scale"].shape == (3, 32) and "attn_post_norm" not in params_lib.abstract(CFG)[1]["layers"]


def test_llama3_rope_scaling_matches_reference_formula():
    sc = RopeScalingConfig(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
    inv = np.asarray(rope_inv_freq(128, 500000.0, sc), np.float64)
    base = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    for got, f in zip(inv, base):
        wl = 2 * np.pi / f
        if wl < 8192 / 4:
            want = f
        elif wl > 8192 / 1:
            want = f / 8
        else:
            s = (8192 / wl - 1) / (4 - 1)
            want = (1 - s) * f / 8 + s * f
        assert got == pytest.approx(want, rel=1e-5)
