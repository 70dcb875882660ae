"""RL rollouts: the training layout of sampled rows agrees with the sampler (runs: test_ppo.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import Config, DataConfig, MeshConfig, ModelConfig, RLConfig, SourceConfig
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks.rl.rollouts import Rollouts, load_prompts, training_rows
from maxlm.train.setup import services

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A sentencepiece tokenizer trained on the arithmetic records (byte fallback: any text encodes)."""
    from maxlm.data.examples import record_texts
    from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece

    path = train_sentencepiece(record_texts("builtin:arithmetic", "grpo", "error"), tmp_path_factory.mktemp("tok") / "t.model", vocab_size=280)
    return load_tokenizer(path)


def test_layout_marks_prompt_and_completion_up_to_the_stop():
    # Two rows, prompt slots P=4, completion slots N=4; stop id 9.
    rows = np.array([[0, 0, 5, 6, 7, 9, 9, 9], [3, 4, 5, 6, 7, 8, 7, 8]])
    out = training_rows(rows, np.array([2, 4]), 4, [9])
    np.testing.assert_array_equal(out["segment_ids"], [[0, 0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out["positions"], [[0, 0, 0, 1, 2, 3, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]])
    np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]])


def test_greedy_rollouts_are_the_argmax_of_the_training_forward(tokenizer):
    cfg = Config(
        task="grpo",
        model=ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=64),
        data=DataConfig(train_files=[SourceConfig(path="builtin:arithmetic", rows="0:8")]),
        rl=RLConfig(max_prompt_len=40, max_new_tokens=8),
    )
    graphdef, _, _ = params_lib.abstract(cfg.model)
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    params = params_lib.init(cfg.model, mesh, 0)
    prompts = load_prompts(cfg, tokenizer, cfg.data.train_files)
    rollouts = Rollouts(cfg, tokenizer, graphdef, prompts, services(cfg, mesh, print), value_head=False)
    rows, lens, _, _, _ = rollouts.sample(params, range(4), 0, 1, 0.0)
    batch = training_rows(rows, lens, 40, rollouts.stops)
    logits = params_lib.bind(graphdef, params)(jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["positions"]))
    pred = np.asarray(jnp.argmax(logits, -1))
    for r in range(4):
        cols = np.nonzero(batch["loss_mask"][r])[0]
        # Each completion token is what the training forward predicts from the tokens before it.
        np.testing.assert_array_equal(pred[r, cols - 1], batch["tokens"][r, cols])


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 0), (1.0, 20)])
def test_the_samplers_logprobs_are_the_training_forwards_and_the_first_update_has_ratio_one(tokenizer, temperature, top_k):
    from maxlm.config import TrainConfig
    from maxlm.losses.logprobs import next_token_weights
    from maxlm.optim import optimizer
    from maxlm.tasks.rl.objective import rollout_scores
    from maxlm.tasks.rl.step import rollout_step

    P, N, G = 40, 8, 2
    cfg = Config(
        task="grpo",
        model=ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=64),
        data=DataConfig(train_files=[SourceConfig(path="builtin:arithmetic", rows="0:8")]),
        train=TrainConfig(global_batch_size=4, learning_rate=3e-2, warmup_steps=0, schedule="constant"),
        rl=RLConfig(max_prompt_len=P, max_new_tokens=N, group_size=G, temperature=temperature, top_k=top_k, kl_coef=0.0, epochs=2, minibatches=2),
    )
    graphdef, _, _ = params_lib.abstract(cfg.model)
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    params = params_lib.init(cfg.model, mesh, 0)
    prompts = load_prompts(cfg, tokenizer, cfg.data.train_files)
    rollouts = Rollouts(cfg, tokenizer, graphdef, prompts, services(cfg, mesh, print), value_head=False)
    # A random model almost never samples the real stop token: with a seventh of the vocab as stops, rows end early.
    rollouts.stops = list(range(200, 240))
    batch, _ = rollouts(params, np.array([0, 1, 2, 3]), 1)
    completion = batch["loss_mask"].sum(axis=1)
    assert completion.min() < N and completion.max() == N  # early stops and a row that ran out of slots
    assert len(set(batch["segment_ids"][:, :P].sum(axis=1).tolist())) > 1  # prompts of different lengths, left-padded
    on = np.asarray(next_token_weights(jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["loss_mask"]))) > 0
    assert on.sum() == completion.sum()
    old = np.asarray(rollout_scores(graphdef, False, params, {k: jnp.asarray(v) for k, v in batch.items()}, temperature=temperature)["old_logp"])
    sample = batch["sample_logp"]
    assert np.all(sample[~on] == 0.0)
    if top_k == 0:
        # The sampler's distribution is the training forward's: softmax(logits / temperature).
        np.testing.assert_allclose(sample[on], old[on], atol=1e-4, rtol=0)
    else:
        # top-k renormalizes over the kept tokens: each sampled token is likelier under the sampler than under the
        # full softmax the training forward keeps (the gap rl.tis_cap weighs).
        assert np.all(sample[on] >= old[on] - 1e-5) and np.mean(sample[on] - old[on]) > 1e-3
        return
    batch["advantages"] = np.random.default_rng(0).normal(size=batch["advantages"].shape).astype(np.float32)  # a policy that moves
    tx = optimizer.optimizer(cfg.train, cfg.rl.epochs * cfg.rl.minibatches)
    step = jax.jit(rollout_step(graphdef, cfg, tx, False))
    _, _, m = step(params, tx.init(params), {k: jnp.asarray(v) for k, v in batch.items()}, None, {"kl_coef": np.float32(0), "step": np.int32(1)})
    assert float(m["ratio_first"]) <= 1e-6  # the first update trains the very policy that sampled
    assert float(m["tis_ratio_max"]) == pytest.approx(1.0, abs=1e-4) and float(m["tis_ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
    assert float(m["approx_kl"]) > 1e-6 and float(m["updates"]) == 4  # the later updates did move it
