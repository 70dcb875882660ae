"""model.attention: splash (the Pallas TPU kernel, in interpret mode here) against maxlm's XLA path:
the same hidden states and gradients on packed rows with padding, for Llama's causal attention and
Gemma 2's sliding window, soft-cap and local/global layers; on one device and on a 3-axis mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import MeshConfig, ModelConfig
from maxlm.models import params as params_lib
from maxlm.models.llama import causal_segment_mask
from maxlm.parallel.mesh import make_mesh

LLAMA = ModelConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128, dtype="float32", max_seq_len=256)
GEMMA2 = dataclasses.replace(
    LLAMA, family="gemma2", sliding_window=100, global_every=2, query_pre_attn_scalar=16, attn_softcap=50.0, final_softcap=30.0,
    post_norms=True, norm_offset=True, embed_scale=True, mlp_activation="gelu_tanh", tie_embeddings=True)


def _rows(b=4, t=256):
    """Returns packed rows: two documents in row 0, padding at the end of row 1, left padding in row 2 (RL's layout)."""
    rng = np.random.default_rng(0)
    seg = np.ones((b, t), np.int32)
    seg[0, 90:] = 2
    seg[1, 200:] = 0
    seg[2, :37] = 0
    pos = np.broadcast_to(np.arange(t), (b, t)).copy()
    pos[0, 90:] = np.arange(t - 90)
    pos[2, 37:] = np.arange(t - 37)
    return jnp.asarray(rng.integers(1, 64, (b, t)), jnp.int32), jnp.asarray(seg), jnp.asarray(pos)


def _loss_and_grads(cfg, params, mesh):
    tokens, seg, pos = _rows()
    graphdef, _, _ = params_lib.abstract(cfg)

    def loss(p):
        hidden = params_lib.bind(graphdef, p).hidden(tokens, pos, causal_segment_mask(seg))[0]
        return jnp.sum(jnp.where(seg[..., None] > 0, hidden, 0.0) ** 2) / 1e3, hidden

    with jax.set_mesh(mesh):
        (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(hidden), jax.tree.map(np.asarray, grads)


@pytest.mark.parametrize("cfg", [LLAMA, GEMMA2], ids=["llama", "gemma2"])
def test_splash_equals_the_xla_path_on_packed_rows(cfg):
    one = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    params = params_lib.init(cfg, one, 0)
    want_h, want_g = _loss_and_grads(cfg, params, one)
    splash = dataclasses.replace(cfg, attention="splash")
    got_h, got_g = _loss_and_grads(splash, params, one)
    seg = np.asarray(_rows()[1])
    np.testing.assert_allclose(got_h[seg > 0], want_h[seg > 0], atol=2e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got_g, want_g)
    # sharded: batch over data x fsdp, heads over tensor (a shard_map around the kernel)
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = jax.device_put(params, params_lib.shardings(splash, mesh))
    mesh_h, mesh_g = _loss_and_grads(splash, sharded, mesh)
    np.testing.assert_allclose(mesh_h, got_h, atol=2e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), mesh_g, got_g)


def test_lengths_off_the_kernels_tile_take_the_xla_path():
    cfg = dataclasses.replace(LLAMA, attention="splash")
    params = params_lib.init(cfg, make_mesh(MeshConfig(data=1), jax.devices()[:1]), 0)
    graphdef, _, _ = params_lib.abstract(cfg)
    xla_graphdef, _, _ = params_lib.abstract(LLAMA)
    tokens = jnp.ones((1, 100), jnp.int32)
    logits = params_lib.bind(graphdef, params)(tokens)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(params_lib.bind(xla_graphdef, params)(tokens)), atol=1e-6)
