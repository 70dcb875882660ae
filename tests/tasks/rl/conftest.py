"""Shared by the RL objective and step tests: a tiny f32 model with a value head, its reference, and a
rollout batch laid out as Rollouts lays it out (left-padded prompts of different lengths, early
stops, a row that runs out of slots), with numpy log-probs of the batch under a params tree."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import MeshConfig, ModelConfig
from maxlm.models import params as params_lib
from maxlm.models.llama import causal_segment_mask
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks.rl.rollouts import training_rows

MODEL = ModelConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32",
                    max_seq_len=32, scalar_head=True)
P, N, STOP, GROUP = 5, 6, 7, 2


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def tiny():
    """(graphdef, params, ref, batch, scores, logp(params, temperature) -> f64 [R, S], hidden(params) -> f64 [R, S, D])."""
    rng = np.random.default_rng(0)
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    graphdef, _, _ = params_lib.abstract(MODEL)
    params = params_lib.init(MODEL, mesh, 0)
    params["score_head"] = jnp.asarray(rng.normal(size=MODEL.hidden_size), jnp.float32)  # nonzero values
    ref = params_lib.init(MODEL, mesh, 1)
    prompt_lens = np.array([5, 2, 3, 4, 1, 5, 2, 3])
    rows = rng.integers(8, 50, (8, P + N))
    for r, at in enumerate([2, None, 0, 3, 5, 1, None, 4]):  # completions of 3, 6 (no stop), 1, 4, 6, 2, 6 and 5 tokens
        if at is not None:
            rows[r, P + at] = STOP
    batch = training_rows(rows, prompt_lens, P, [STOP])
    scores = rng.normal(size=8).astype(np.float32)
    model = lambda p: params_lib.bind(graphdef, p)

    def logp(p, temperature=1.0):
        tokens = jnp.asarray(batch["tokens"])
        logits = np.asarray(model(p)(tokens, jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["positions"])), np.float64)
        lp = _log_softmax64(logits / temperature)
        out = np.zeros(rows.shape)
        out[:, :-1] = np.take_along_axis(lp[:, :-1], batch["tokens"][:, 1:, None], axis=-1)[..., 0]
        return out

    def hidden(p):
        h, _ = model(p).hidden(jnp.asarray(batch["tokens"]), jnp.asarray(batch["positions"]), causal_segment_mask(jnp.asarray(batch["segment_ids"])))
        return np.asarray(h, np.float64)

    # Position t predicts token t + 1: the weights of the completion's actions.
    w = np.zeros(rows.shape)
    w[:, :-1] = batch["loss_mask"][:, 1:] * (batch["segment_ids"][:, :-1] > 0)
    return types.SimpleNamespace(model=MODEL, graphdef=graphdef, params=params, ref=ref, batch=batch, scores=scores, logp=logp, hidden=hidden, w=w)
