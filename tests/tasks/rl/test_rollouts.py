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
    rows, lens, _, _ = rollouts.sample(params, range(4), 0, 1, 0.0)
    batch = training_rows(rows, lens, 40, rollouts.stops)
    logits = params_lib.bind(graphdef, params)(jnp.asarray(batch["tokens"]), jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["positions"]))
    pred = np.asarray(jnp.argmax(logits, -1))
    for r in range(4):
        cols = np.nonzero(batch["loss_mask"][r])[0]
        # Each completion token is what the training forward predicts from the tokens before it.
        np.testing.assert_array_equal(pred[r, cols - 1], batch["tokens"][r, cols])
