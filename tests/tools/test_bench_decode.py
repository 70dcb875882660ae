"""tools/bench/decode.py on a tiny Llama: its grid and its continuous-batching mix agree with transformers' `generate`
token for token, and the mix's stop ids spread the answer lengths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from maxlm.config import MeshConfig, ModelConfig
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "bench"))
import decode  # tools/bench/decode.py, its folder on sys.path as when it runs as a script

pytest.importorskip("transformers")
CFG = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=64)
ARGS = argparse.Namespace(rounds=1, new_tokens=12, mix_prompts=6, mix_batch=2)


@pytest.fixture(scope="module")
def shape(tmp_path_factory):
    mesh = make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    s = decode.Shape("tiny", CFG, 8)
    s.graphdef, _, _ = params_lib.abstract(CFG)
    with jax.set_mesh(mesh):
        s.params = params_lib.init(CFG, mesh, 0)
        s.hf = decode.load_transformers(CFG, s.params, str(tmp_path_factory.mktemp("hf")), "float32")
        yield s


def test_grid_gives_transformers_tokens(shape):
    (case,) = decode.grid([shape], [3], ARGS)
    assert case["same_tokens_fraction"] == 1.0
    assert len(case["maxlm"]["rounds_seconds"]) == len(case["transformers"]["rounds_seconds"]) == 1


def test_mix_streams_the_one_batch_tokens_and_transformers_answers(shape):
    mix = decode.mix(shape, ARGS)
    assert mix["identical_tokens"] and mix["same_answers_as_transformers_fraction"] == 1.0
    lengths = mix["answer_lengths"]["all"]
    assert len(lengths) == 6 and min(lengths) < max(lengths) and mix["useful_new_tokens"] == sum(lengths)
    assert mix["prompt_lens"][0] < mix["prompt_lens"][1]  # left padding is exercised


def test_answer_lengths_count_up_to_the_first_stop():
    new = np.array([[5, 7, 9, 7], [4, 4, 4, 4], [9, 1, 1, 1]])
    assert decode.answer_lengths(new, [7, 9]).tolist() == [2, 4, 1]
