"""Task objectives against a direct numpy computation from the model's logits and scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from maxlm.config import Config, MeshConfig, ModelConfig, PreferenceConfig
from maxlm.models import params as params_lib
from maxlm.models.params import bind
from maxlm.parallel.mesh import make_mesh
from maxlm.optim.update import report
from maxlm.tasks import TASKS, pairs

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=32, scalar_head=True)


def pair_batch(rng, b=3, t=16):
    """Random pairs: prompt of 4 tokens, completions of random length, right padding."""
    tokens = rng.integers(1, 64, (b, 2, t)).astype(np.int32)
    seg = np.zeros((b, 2, t), np.int32)
    mask = np.zeros((b, 2, t), np.float32)
    for i in range(b):
        for j in range(2):
            n = int(rng.integers(6, t + 1))
            seg[i, j, :n] = 1
            mask[i, j, 4:n] = 1
            tokens[i, j, n:] = 0
    pos = np.where(seg > 0, np.arange(t)[None, None], 0).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos, "loss_mask": mask, "pair_mask": np.ones(b, np.float32), "margin": np.zeros(b, np.float32)}


def setup():
    graphdef, _, _ = params_lib.abstract(CFG)
    params = params_lib.init(CFG, make_mesh(MeshConfig(data=1), jax.devices()[:1]), 0)
    params["score_head"] = jnp.asarray(np.random.default_rng(1).normal(size=CFG.hidden_size), jnp.float32)
    return graphdef, params


def test_completion_logps_and_rewards_match_numpy():
    graphdef, params = setup()
    batch = pair_batch(np.random.default_rng(0))
    logps, counts = pairs.completion_logps(graphdef, params, batch)
    rewards = pairs.pair_rewards(graphdef, params, batch)
    mean_rewards = pairs.pair_rewards(graphdef, params, batch, "mean")
    model = bind(graphdef, params)
    for i in range(3):
        for j in range(2):
            n = int(batch["segment_ids"][i, j].sum())
            toks = batch["tokens"][i, j, :n][None]
            logits = np.asarray(model(jnp.asarray(toks)), np.float64)[0]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
            want = sum(logp[t - 1, toks[0, t]] for t in range(4, n))
            np.testing.assert_allclose(float(logps[i, j]), want, rtol=1e-5)
            assert int(counts[i, j]) == n - 4
            hidden, _ = model.hidden(jnp.asarray(toks), jnp.arange(n)[None], jnp.tril(jnp.ones((1, n, n), bool)))
            head = np.asarray(hidden, np.float64)[0] @ np.asarray(params["score_head"], np.float64)
            np.testing.assert_allclose(float(rewards[i, j]), head[-1], rtol=1e-5)
            np.testing.assert_allclose(float(mean_rewards[i, j]), head[4:n].mean(), rtol=1e-5)  # rm.pooling=mean: the reply's tokens


def test_dpo_against_itself_is_log2_and_padding_pairs_count_nothing():
    graphdef, params = setup()
    batch = pair_batch(np.random.default_rng(2))
    batch["pair_mask"][-1] = 0.0
    cfg = Config(task="dpo", dpo=PreferenceConfig(kind="sigmoid", beta=0.1))
    loss, sums = TASKS[cfg.task].objective(graphdef, cfg)(params, batch, params)
    m = report(sums)
    assert float(sums["count"]) == 2.0
    np.testing.assert_allclose(float(m["loss"]), np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(float(m["margin"]), 0.0, atol=1e-6)


def test_reward_objective_accuracy_counts_real_pairs():
    graphdef, params = setup()
    batch = pair_batch(np.random.default_rng(3), b=4)
    batch["pair_mask"][0] = 0.0
    r = np.asarray(pairs.pair_rewards(graphdef, params, batch))
    _, sums = pairs.reward_model(graphdef, 0.0)(params, batch)
    want_loss = np.mean([np.log1p(np.exp(-(r[i, 0] - r[i, 1]))) for i in range(1, 4)])
    m = report(sums)
    np.testing.assert_allclose(float(m["loss"]), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(m["accuracy"]), np.mean(r[1:, 0] > r[1:, 1]), rtol=1e-6)
