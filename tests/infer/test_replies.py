"""Rewards of replies: a conversation over the reward model's context has its prompt cut from the
left as reward training reads pairs (the reply whole), one that fits is scored untouched."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import MeshConfig, load_config
from maxlm.data import chat
from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece
from maxlm.infer.pretrained import Pretrained
from maxlm.infer.replies import ScoringModel
from maxlm.infer.scoring import Scorer
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 128
LONG = "The textwrap module wraps and fills paragraphs of text, one line at a time. " * 12


def user(text):
    return {"role": "user", "content": text}


@pytest.fixture(scope="module")
def rm(tmp_path_factory) -> ScoringModel:
    """Returns a random reward model (configs/models/tiny.yaml, context MAX_LEN) with a 512-piece sentencepiece tokenizer."""
    texts = [(Path(os.__file__).parent / n).read_text() for n in ("textwrap.py", "string.py")]
    tok = load_tokenizer(train_sentencepiece(texts, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=512, max_sentences=2000))
    cfg = load_config(REPO / "configs" / "models" / "tiny.yaml",
                      [f"model.vocab_size={tok.vocab_size}", f"model.max_seq_len={MAX_LEN}", f"data.seq_len={MAX_LEN}", "task=rm"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scalar_head=True))
    graphdef, shapes, _ = params_lib.abstract(cfg.model)
    rng = np.random.default_rng(3)
    # numpy, not params.init: nothing to compile; 1-D leaves (norm scales, the head) near 1.
    params = jax.tree.map(
        lambda s: jnp.asarray(1.0 + 0.2 * rng.standard_normal(s.shape) if len(s.shape) == 1 else 0.3 * rng.standard_normal(s.shape), s.dtype),
        shapes,
    )
    mesh = make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    model = Pretrained(cfg, params, graphdef, tok, mesh)
    return ScoringModel("rm", Scorer(model), "default")


def test_long_prompts_are_cut_from_the_left_and_the_reply_scored_whole(rm):
    prompts = [[user("Wrap this paragraph.")],
               [user("Hi."), {"role": "assistant", "content": LONG}, user("Wrap this paragraph.")],
               [user("Wrap this paragraph.")]]
    replies = ["Here it is, wrapped to width 70.", "Here it is, wrapped to width 70.", LONG]
    reward, tokens, truncated = rm.reply_rewards(prompts, replies)
    assert truncated.tolist() == [False, True, True]
    short = chat.encode_completion(rm.tokenizer, "default", prompts[0], replies[0])
    # A conversation that fits is scored untouched, as before; the long one as its last turn + reply alone.
    direct = Scorer(rm.model).rewards([short[0]], [short[1]])
    np.testing.assert_allclose(reward[:2], [direct[0], direct[0]], rtol=1e-5)
    assert tokens.tolist()[:2] == [len(short[0])] * 2
    # A reply that alone does not fit: no reward, and a token count over the context says why.
    assert np.isnan(reward[2]) and tokens[2] > MAX_LEN
    assert reward[0] != 0.0  # a random head: the comparison above can fail
