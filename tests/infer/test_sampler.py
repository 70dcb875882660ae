"""The KV-cache sampler against uncached greedy decoding, and the logit filters against numpy."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import MeshConfig, ModelConfig
from maxlm.errors import MaxlmError
from maxlm.infer.sampler import filter_logits, generate, sample
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh

CFG = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=64)


@pytest.fixture(scope="module")
def model():
    mesh = make_mesh(MeshConfig())
    graphdef, _, _ = params_lib.abstract(CFG)
    return graphdef, params_lib.init(CFG, mesh, 0)


def test_cached_greedy_equals_full_recompute_per_row(model):
    graphdef, params = model
    prompts = [[5, 6, 7, 8, 9], [3, 4], [11]]
    out = generate(graphdef, CFG, params, prompts, 7)
    chex.assert_shape(out, (3, 5 + 7))
    decoder = params_lib.bind(graphdef, params)
    for p, row in zip(prompts, out):
        seq = list(p)
        for _ in range(7):
            seq.append(int(jnp.argmax(decoder(jnp.asarray([seq]))[0, -1])))
        assert row[-7:].tolist() == seq[len(p):]


def test_stop_token_ends_a_row(model):
    graphdef, params = model
    free = generate(graphdef, CFG, params, [[5, 6, 7]], 6)[0, -6:]
    stop = int(free[2])
    out = generate(graphdef, CFG, params, [[5, 6, 7]], 6, stop_ids=[stop])[0, -6:]
    first = free.tolist().index(stop)
    assert out[: first + 1].tolist() == free[: first + 1].tolist()
    assert set(out[first:].tolist()) == {stop}


def test_sampling_is_seeded_and_respects_top_k(model):
    graphdef, params = model
    a = generate(graphdef, CFG, params, [[1, 2]], 8, temperature=1.0, top_k=3, seed=4)
    b = generate(graphdef, CFG, params, [[1, 2]], 8, temperature=1.0, top_k=3, seed=4)
    np.testing.assert_array_equal(a, b)


def test_prompt_too_long_is_a_clear_error(model):
    graphdef, params = model
    with pytest.raises(MaxlmError, match="exceeds model.max_seq_len"):
        generate(graphdef, CFG, params, [[1] * 60], 10)


def test_filters_match_numpy():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
    kept = lambda out: np.isfinite(np.asarray(out))[0].tolist()
    assert kept(filter_logits(jnp.asarray(logits), top_k=2)) == [True, True, False, False, False]
    # nucleus 0.8: 0.5 + 0.2 = 0.7 < 0.8, so the 0.15 token is still needed.
    assert kept(filter_logits(jnp.asarray(logits), top_p=0.8)) == [True, True, True, False, False]
    assert kept(filter_logits(jnp.asarray(logits), top_p=0.5)) == [True, False, False, False, False]


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.3)])
def test_each_new_tokens_logprob_is_that_of_the_distribution_it_was_drawn_from(model, temperature, top_k, top_p):
    graphdef, params = model
    prompts, n = [[5, 6, 7, 8, 9], [3, 4]], 6
    rows, logp = sample(graphdef, CFG, params, prompts, n, temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    chex.assert_shape(logp, (2, n))
    assert logp.dtype == np.float32
    np.testing.assert_array_equal(rows, generate(graphdef, CFG, params, prompts, n, temperature=temperature, top_k=top_k, top_p=top_p, seed=3))
    decoder = params_lib.bind(graphdef, params)
    for p, row, lp in zip(prompts, rows, logp):
        seq = list(p) + row[-n:].tolist()
        logits = np.asarray(decoder(jnp.asarray([seq]))[0], np.float64)
        for j in range(n):
            x = logits[len(p) + j - 1]  # the position that predicts new token j
            if temperature > 0:
                x = x / temperature
                order = np.argsort(-x)
                keep = np.zeros(x.shape, bool)
                keep[order[: top_k or len(x)]] = True
                probs = np.exp(_log_softmax(x[order]))
                keep[order[(np.cumsum(probs) - probs) >= top_p]] = False  # the nucleus: mass before a token below top_p
                x = np.where(keep, x, -np.inf)
            assert lp[j] == pytest.approx(_log_softmax(x)[seq[len(p) + j]], abs=1e-4)


def test_a_rows_logprobs_are_zero_after_its_stop(model):
    graphdef, params = model
    free = generate(graphdef, CFG, params, [[5, 6, 7]], 6)[0, -6:]
    stop = int(free[2])
    first = free.tolist().index(stop)
    _, logp = sample(graphdef, CFG, params, [[5, 6, 7]], 6, stop_ids=[stop])
    assert np.all(logp[0, : first + 1] < 0) and np.all(logp[0, first + 1 :] == 0.0)


def test_a_group_prefilled_once_samples_what_separate_prefills_sample(model):
    graphdef, params = model
    rows = [[5, 6, 7, 8]] * 3 + [[2, 3]] * 3
    kw = dict(temperature=1.0, seed=7, stop_ids=[4])
    alone, logp_alone = sample(graphdef, CFG, params, rows, 9, **kw)
    grouped, logp_grouped = sample(graphdef, CFG, params, rows, 9, group=3, **kw)
    np.testing.assert_array_equal(grouped, alone)
    np.testing.assert_allclose(logp_grouped, logp_alone, atol=1e-5)
    # The rows of a group differ: each drew its own sample after the shared prefill.
    assert len({tuple(r) for r in grouped[:3, -9:].tolist()}) > 1


def test_rows_that_are_not_groups_are_refused(model):
    graphdef, params = model
    with pytest.raises(ValueError, match="not runs of 2 copies"):
        sample(graphdef, CFG, params, [[5, 6], [5, 7]], 3, group=2)
    with pytest.raises(ValueError, match="must divide"):
        sample(graphdef, CFG, params, [[5, 6]] * 3, 3, group=2)
