"""The fused, chunked LM-head cross-entropy against a float64 numpy re-derivation of the loss and
its gradients, incl. packing, masks, z-loss, and the objective against plain logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import MeshConfig, ModelConfig
from maxlm.models import params as params_lib
from maxlm.models.params import bind
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks.lm import language_model
from maxlm.losses.head import chunk_count, fused_next_token_loss
from maxlm.losses.logprobs import next_token_weights, token_logprobs


def numpy_loss_and_grads(h, head, tokens, seg, mask, z):
    """Returns (nll, z-sum, count, d/dh, d/dhead) of Σ nll + Σ z·logZ², by the definition, in float64."""
    h, head = h.astype(np.float64), head.astype(np.float64)
    nll = zs = count = 0.0
    dh, dhead = np.zeros_like(h), np.zeros_like(head)
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            if seg[b, t + 1] == 0 or seg[b, t + 1] != seg[b, t] or mask[b, t + 1] == 0:
                continue
            row = h[b, t] @ head
            logz = np.log(np.exp(row - row.max()).sum()) + row.max()
            target = tokens[b, t + 1]
            nll += logz - row[target]
            zs += z * logz**2
            count += 1
            p = np.exp(row - logz)
            d_row = p * (1 + 2 * z * logz)
            d_row[target] -= 1
            dh[b, t] = head @ d_row
            dhead += np.outer(h[b, t], d_row)
    return nll, zs, count, dh, dhead


def _case(rng, b=2, t=12, d=6, v=11):
    h = rng.normal(size=(b, t, d)).astype(np.float32)
    head = rng.normal(size=(d, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t)).astype(np.int32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 0, 0, 0, 0], [1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3]], np.int32)
    mask = np.ones((b, t), np.float32)
    mask[1, 2] = 0  # e.g. a prompt token in SFT
    return h, head, tokens, seg, mask


@pytest.mark.parametrize("chunks", [1, 3, 4, 12])
@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_loss_and_gradients_match_numpy(chunks, z):
    h, head, tokens, seg, mask = _case(np.random.default_rng(chunks))
    w = next_token_weights(jnp.asarray(seg), jnp.asarray(mask))
    targets = jnp.pad(jnp.asarray(tokens)[:, 1:], ((0, 0), (0, 1)))

    def loss(h, head):
        total, (nll, zs) = fused_next_token_loss(h, head, targets, w, z, chunks)
        return 3.0 * total, (nll, zs)  # a cotangent other than 1 must scale the stored gradients

    (total, (nll, zs)), (dh, dhead) = jax.value_and_grad(loss, (0, 1), has_aux=True)(jnp.asarray(h), jnp.asarray(head))
    ref_nll, ref_z, count, ref_dh, ref_dhead = numpy_loss_and_grads(h, head, tokens, seg, mask, z)
    assert float(jnp.sum(w)) == count == 15  # 7 in row 0, 8 in row 1
    np.testing.assert_allclose(float(nll), ref_nll, rtol=1e-5)
    np.testing.assert_allclose(float(zs), ref_z, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(float(total), 3.0 * (ref_nll + ref_z), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dh), 3.0 * ref_dh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dhead), 3.0 * ref_dhead, rtol=1e-4, atol=1e-5)
    # Without differentiation the same sums come from the loss-only path.
    np.testing.assert_allclose(float(fused_next_token_loss(jnp.asarray(h), jnp.asarray(head), targets, w, z, chunks)[0]), ref_nll + ref_z, rtol=1e-5)


def test_bf16_hidden_gives_bf16_gradient_close_to_f32():
    h, head, tokens, seg, mask = _case(np.random.default_rng(0))
    w = next_token_weights(jnp.asarray(seg), jnp.asarray(mask))
    targets = jnp.pad(jnp.asarray(tokens)[:, 1:], ((0, 0), (0, 1)))
    grad = jax.grad(lambda h, head: fused_next_token_loss(h, head, targets, w, 0.0, 4)[0], (0, 1))
    dh16, dhead16 = grad(jnp.asarray(h, jnp.bfloat16), jnp.asarray(head))
    assert dh16.dtype == jnp.bfloat16 and dhead16.dtype == jnp.float32
    _, _, _, ref_dh, ref_dhead = numpy_loss_and_grads(h, head, tokens, seg, mask, 0.0)
    np.testing.assert_allclose(np.asarray(dh16, np.float32), ref_dh, atol=0.1)
    np.testing.assert_allclose(np.asarray(dhead16), ref_dhead, atol=0.25)


def test_chunk_count_is_the_largest_divisor_not_above_the_limit():
    assert [chunk_count(128, 4), chunk_count(1000, 4), chunk_count(1001, 4), chunk_count(6, 4), chunk_count(3, 8), chunk_count(64, 1)] == [4, 4, 1, 3, 3, 1]


# Gemma 2's switches, its final soft-cap small enough (0.5) that tanh bends every logit.
GEMMA2 = dict(family="gemma2", sliding_window=4, global_every=2, query_pre_attn_scalar=6, attn_softcap=1.0, final_softcap=0.5,
              post_norms=True, norm_offset=True, embed_scale=True, mlp_activation="gelu_tanh")


@pytest.mark.parametrize("model", [dict(tie_embeddings=False), dict(tie_embeddings=True), dict(GEMMA2, tie_embeddings=True)],
                         ids=["untied", "tied", "gemma2"])
def test_objective_equals_plain_logits_loss(model):
    """Gradients of the fused objective equal those of logits → log-softmax on the whole [B, T, V] (tied head and
    Gemma 2's soft-capped logits included)."""
    cfg = ModelConfig(vocab_size=37, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=24, max_seq_len=16, dtype="float32", **model)
    graphdef, _, _ = params_lib.abstract(cfg)
    params = params_lib.init(cfg, make_mesh(MeshConfig()), 0)
    h, head, tokens, seg, mask = _case(np.random.default_rng(1), v=37)
    batch = {"tokens": jnp.asarray(tokens), "segment_ids": jnp.asarray(seg), "positions": jnp.asarray(np.tile(np.arange(12, dtype=np.int32), (2, 1))), "loss_mask": jnp.asarray(mask)}

    def plain(params, batch, ref_params=None):
        logits = bind(graphdef, params)(batch["tokens"], batch["segment_ids"], batch["positions"])
        logp, log_z = token_logprobs(logits, jnp.pad(batch["tokens"][:, 1:], ((0, 0), (0, 1))))
        w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
        return -jnp.sum(logp * w) + 1e-3 * jnp.sum(jnp.square(log_z) * w), {}

    (ref_loss, _), ref_grads = jax.value_and_grad(plain, has_aux=True)(params, batch)
    for chunks in (1, 4):
        (loss, sums), grads = jax.value_and_grad(language_model(graphdef, 1e-3, chunks), has_aux=True)(params, batch)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
        np.testing.assert_allclose(float(sums["loss_sum"] + sums["z_loss_sum"]), float(ref_loss), rtol=1e-5)
        assert float(sums["count"]) == 15
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
