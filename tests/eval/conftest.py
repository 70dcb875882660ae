"""Fixtures of the eval tests: tiny maxlm runs (random weights, a real sentencepiece tokenizer) on disk."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maxlm
from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config, MeshConfig, ModelConfig, TokenizerConfig
from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh


@pytest.fixture
def write_jsonl(tmp_path):
    """Returns a writer: (file name, records) -> the path of a jsonl file of those records in tmp_path."""

    def write(name: str, records: list) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(path)

    return write


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """Returns a 512-piece sentencepiece model trained on a few stdlib modules."""
    root = Path(os.__file__).parent
    texts = [(root / n).read_text() for n in ("textwrap.py", "string.py")]
    return train_sentencepiece(texts, tmp_path_factory.mktemp("sp") / "sp.model", vocab_size=512, max_sentences=2000)


@pytest.fixture(scope="session")
def one_device():
    """A one-device mesh: the in-process models compile once, small."""
    return make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])


def save_run(root: Path, sp_model: Path, task: str, seed: int, max_seq_len: int, scalar_head: bool = False) -> Path:
    """Returns a run dir holding one checkpoint of random params."""
    tok = load_tokenizer(sp_model)
    m = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                    max_seq_len=max_seq_len, dtype="float32", scalar_head=scalar_head)
    cfg = Config(run_dir=str(root / task), task=task, model=m, tokenizer=TokenizerConfig(path=str(sp_model)))
    cfg.data = dataclasses.replace(cfg.data, seq_len=max_seq_len)
    _, shapes, _ = params_lib.abstract(m)
    rng = np.random.default_rng(seed)
    # numpy, not params.init: nothing to compile. Norm scales (1-D) near 1, every other weight (the
    # scalar head too) random and large enough that greedy text and rewards vary from prompt to prompt.
    p = jax.tree.map(
        lambda s: jnp.asarray(1.0 + 0.2 * rng.standard_normal(s.shape) if len(s.shape) == 1 else 0.3 * rng.standard_normal(s.shape), s.dtype),
        shapes,
    )
    ckpts = Checkpoints(cfg.run_dir, async_save=False)
    ckpts.save(1, p, cfg)
    ckpts.close()
    return Path(cfg.run_dir)


@pytest.fixture(scope="session")
def runs(tmp_path_factory, sp_model) -> dict[str, Path]:
    """Returns {"pretrain", "sft", "rm"}: run dirs of a plain LM (context 64), a chat model and a reward model (context 128)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "pretrain": save_run(root, sp_model, "pretrain", 1, 64),
        "sft": save_run(root, sp_model, "sft", 2, 128),
        "rm": save_run(root, sp_model, "rm", 3, 128, scalar_head=True),
    }


@pytest.fixture(scope="session")
def models(runs, one_device) -> dict:
    """Returns the runs loaded with maxlm.from_pretrained on one device."""
    return {k: maxlm.from_pretrained(v, mesh=one_device) for k, v in runs.items()}
