"""The scorer against independent computations: log-probs from `Pretrained.__call__` logits in
numpy, embeddings from `Decoder.hidden`, rewards from `Decoder.scores`; padding and batching
never change a result, and few shapes are compiled."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import MeshConfig, load_config
from maxlm.errors import MaxlmError
from maxlm.infer.scoring import Scorer, bucket_length, length_batches, perplexity
from maxlm.models import params as params_lib
from maxlm.models.llama import causal_segment_mask
from maxlm.parallel.mesh import make_mesh
from maxlm.infer.pretrained import Pretrained

REPO = Path(__file__).resolve().parents[2]
V = 97
LENGTHS = (1, 5, 37, 64, 100)


def random_model(scalar_head: bool = False, seed: int = 0) -> Pretrained:
    """Returns a tiny model (configs/models/tiny.yaml) with random weights on one device."""
    cfg = load_config(REPO / "configs" / "models" / "tiny.yaml", [f"model.vocab_size={V}", "model.max_seq_len=128", "data.seq_len=128"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scalar_head=scalar_head))
    graphdef, shapes, _ = params_lib.abstract(cfg.model)
    rng = np.random.default_rng(seed)
    # numpy, not params.init: no init to compile; 1-D leaves (norm scales, score head) near 1.
    params = jax.tree.map(
        lambda s: jnp.asarray(1.0 + 0.2 * rng.standard_normal(s.shape) if len(s.shape) == 1 else 0.2 * rng.standard_normal(s.shape), s.dtype),
        shapes,
    )
    mesh = make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    return Pretrained(cfg, params, graphdef, None, mesh)


@pytest.fixture(scope="module")
def model() -> Pretrained:
    return random_model()


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(1)
    ids = [rng.integers(0, V, n).tolist() for n in LENGTHS]
    masks = [rng.integers(0, 2, n).tolist() for n in LENGTHS]
    for m in masks:
        m[0] = 1  # the first token has no context: never scored, whatever its mask says
    return ids, masks


def hidden_and_scores(model: Pretrained, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns Decoder.hidden [B, T, D] (and Decoder.scores [B, T] for a scalar head) of unpadded-causal rows."""

    def f(params, tokens_BxT):
        decoder = params_lib.bind(model.graphdef, params)
        b, t = tokens_BxT.shape
        h, _ = decoder.hidden(tokens_BxT, jnp.broadcast_to(jnp.arange(t), (b, t)), causal_segment_mask(jnp.ones((b, t), jnp.int32)))
        return h, (decoder.scores(h) if model.config.model.scalar_head else None)

    with jax.set_mesh(model.mesh):
        h, s = jax.jit(f)(model.params, jnp.asarray(tokens))
    return np.asarray(h, np.float64), (None if s is None else np.asarray(s, np.float64))


def padded(ids) -> np.ndarray:
    out = np.zeros((len(ids), max(map(len, ids))), np.int32)
    for i, x in enumerate(ids):
        out[i, : len(x)] = x
    return out


def test_logprobs_equal_numpy_from_the_models_logits(model, seqs):
    ids, masks = seqs
    total, count = Scorer(model, batch_tokens=128).logprobs(ids, masks)
    # The reference: one causal forward of right-padded rows (padding after a token cannot reach it).
    logits = np.asarray(model(padded(ids)), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    for i, (x, m) in enumerate(zip(ids, masks)):
        ref = sum(logp[i, t - 1, x[t]] for t in range(1, len(x)) if m[t])
        assert count[i] == sum(m[1:])
        assert total[i] == pytest.approx(ref, rel=1e-5, abs=1e-4)
    assert np.isnan(perplexity(total, count)[0])  # one token: nothing scored
    np.testing.assert_allclose(perplexity(total[1:], count[1:]), np.exp(-total[1:] / count[1:]))


def test_loglikelihoods_score_continuations_and_flag_greedy_ones(model):
    rng = np.random.default_rng(3)
    contexts = [rng.integers(0, V, n).tolist() for n in (3, 20, 120)]
    # 120 context + 10 continuation tokens keep their last 129 (max_seq_len + 1): the context's last 119.
    kept = [contexts[0], contexts[1], contexts[2][-119:]]
    logits = np.asarray(model(padded(kept)), np.float64)
    argmax = [int(np.argmax(logits[i, len(c) - 1])) for i, c in enumerate(kept)]
    # A greedy first token then any tokens, the greedy one alone, a non-greedy one; the third request is cut from the left.
    continuations = [[argmax[0], 5], [argmax[1]], [(argmax[2] + 1) % V] + rng.integers(0, V, 9).tolist()]
    logp, greedy = Scorer(model, batch_tokens=256).loglikelihoods(contexts, continuations)
    whole = [(c + k)[-129:] for c, k in zip(contexts, continuations)]
    ref_logits = np.asarray(model(padded([w[:-1] for w in whole])), np.float64)
    ref_logp = ref_logits - ref_logits.max(-1, keepdims=True)
    ref_logp -= np.log(np.exp(ref_logp).sum(-1, keepdims=True))
    for i, (w, k) in enumerate(zip(whole, continuations)):
        picks = range(len(w) - 1 - len(k), len(w) - 1)
        assert logp[i] == pytest.approx(sum(ref_logp[i, t, w[t + 1]] for t in picks), rel=1e-5, abs=1e-4)
        assert greedy[i] == all(int(np.argmax(ref_logits[i, t])) == w[t + 1] for t in picks)
    assert list(greedy[1:]) == [True, False]
    with pytest.raises(MaxlmError, match="request 0: needs a context"):
        Scorer(model).loglikelihoods([[]], [[1]])


def test_padding_and_batch_mates_do_not_change_results(model, seqs):
    ids, masks = seqs
    together = Scorer(model, batch_tokens=128).logprobs(ids, masks)
    alone = Scorer(model, batch_tokens=64).logprobs([ids[2]], [masks[2]])
    assert alone[0][0] == pytest.approx(together[0][2], rel=1e-6)
    no_mask = Scorer(model, batch_tokens=128).logprobs(ids)
    assert list(no_mask[1]) == [n - 1 for n in LENGTHS]


def test_embeddings_are_the_masked_mean_of_hidden_states(model, seqs):
    ids, masks = seqs[0][:4], seqs[1][:4]  # lengths 1..64: one bucket, one compile per call
    sc = Scorer(model)
    emb = sc.embed(ids, masks)
    unit = sc.embed(ids, masks, normalize=True)
    h, _ = hidden_and_scores(model, padded(ids))
    for i, (x, m) in enumerate(zip(ids, masks)):
        w = np.asarray(m, np.float64)
        ref = (h[i, : len(x)] * w[:, None]).sum(0) / max(w.sum(), 1)
        np.testing.assert_allclose(emb[i], ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(unit[i], ref / np.linalg.norm(ref), rtol=1e-4, atol=1e-5)
    chex.assert_shape(emb, (4, model.config.model.hidden_size))


def test_rewards_read_the_scalar_head_at_the_last_token(seqs):
    rm = random_model(scalar_head=True, seed=2)
    ids = seqs[0][1:4]
    r = Scorer(rm).rewards(ids)
    _, scores = hidden_and_scores(rm, padded(ids))
    np.testing.assert_allclose(r, [scores[i, len(x) - 1] for i, x in enumerate(ids)], rtol=1e-4, atol=1e-5)
    assert len(set(np.round(r, 4))) == 3  # the head is not constant, so the test can fail


def test_mean_pooling_rewards_average_the_head_over_the_reply(seqs):
    rm = random_model(scalar_head=True, seed=2)
    rm = dataclasses.replace(rm, config=dataclasses.replace(rm.config, rm=dataclasses.replace(rm.config.rm, pooling="mean")))
    ids = seqs[0][1:4]
    masks = [[0] * (len(x) // 2) + [1] * (len(x) - len(x) // 2) for x in ids]
    r = Scorer(rm).rewards(ids, masks)
    _, scores = hidden_and_scores(rm, padded(ids))
    np.testing.assert_allclose(r, [scores[i, len(x) // 2:len(x)].mean() for i, x in enumerate(ids)], rtol=1e-4, atol=1e-5)
    with pytest.raises(MaxlmError, match="pass the reply masks"):
        Scorer(rm).rewards(ids)


def test_bad_input_is_named(model):
    sc = Scorer(model)
    with pytest.raises(MaxlmError, match="sequence 1 has 129 tokens, more than model.max_seq_len=128"):
        sc.logprobs([[1, 2], [1] * 129])
    with pytest.raises(MaxlmError, match="no scalar head"):
        sc.rewards([[1, 2]])
    with pytest.raises(MaxlmError, match="sequence 0: mask has 1 entries for 2 tokens"):
        sc.logprobs([[1, 2]], [[1]])


def test_length_batches_cover_every_sequence_with_few_shapes():
    lengths = np.random.default_rng(0).integers(1, 2049, 5000)
    seen, shapes = [], set()
    for idx, t, rows in length_batches(lengths, batch_tokens=8192, max_len=2048):
        assert len(idx) <= rows and all(lengths[idx] <= t)
        assert rows * t <= max(8192, t) and rows & (rows - 1) == 0
        seen += idx.tolist()
        shapes.add((rows, t))
    assert sorted(seen) == list(range(5000))
    assert len(shapes) <= 12  # lengths 64..2048: 6 buckets, each a full batch shape and one short last
    assert bucket_length(1, 2048) == 64 and bucket_length(65, 2048) == 128 and bucket_length(100, 100) == 100
