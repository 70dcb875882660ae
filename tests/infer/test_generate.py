"""The one batched generation: N prompts decoded b rows at a time give (greedy) what each prompt gives alone,
rows are cut at their first stop id, and a call's seed follows its prompts."""

from __future__ import annotations

import jax
import pytest

from maxlm.config import MeshConfig, ModelConfig
from maxlm.infer.generate import generate_batched, until_stop
from maxlm.infer.sampler import generate
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh

CFG = ModelConfig(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=64)
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [11], [20, 21, 22, 23, 24, 25, 26], [40, 41, 42]]
NEW = 8


class Letters:
    """A stand-in tokenizer: token t decodes as "<t>", pad id 0 (the batched generation only pads and decodes)."""

    pad_id = 0

    def decode(self, ids) -> str:
        return "".join(f"<{int(t)}>" for t in ids)


@pytest.fixture(scope="module")
def model():
    mesh = make_mesh(MeshConfig(data=1, fsdp=1), devices=jax.devices()[:1])
    graphdef, _, _ = params_lib.abstract(CFG)
    with jax.set_mesh(mesh):
        yield graphdef, params_lib.init(CFG, mesh, 0)


@pytest.fixture(scope="module")
def alone(model):
    """Each prompt's greedy new tokens, sampled on its own (no padding, no batch)."""
    graphdef, params = model
    return [generate(graphdef, CFG, params, [p], NEW)[0, -NEW:].tolist() for p in PROMPTS]


def test_until_stop_cuts_at_the_earliest_stop():
    assert until_stop([5, 6, 2, 7, 3], [3, 2]) == [5, 6]
    assert until_stop([5, 6, 7], [2]) == [5, 6, 7]
    assert until_stop([2, 5], [2]) == []
    assert until_stop([5, 6], []) == [5, 6]


@pytest.mark.parametrize("batch_size", [None, 1, 2, 4])
def test_batches_of_b_give_what_each_prompt_gives_alone(model, alone, batch_size):
    graphdef, params = model
    out = generate_batched(graphdef, CFG, params, Letters(), PROMPTS, NEW, batch_size=batch_size, prompt_len=16)
    assert out.rows_NxTM.shape == (len(PROMPTS), 16 + NEW) and out.prompt_len == 16
    assert out.ids == alone and out.stopped == [False] * len(PROMPTS)
    assert out.texts == [Letters().decode(x) for x in alone]
    for p, row in zip(PROMPTS, out.rows_NxTM):
        assert row[16 - len(p) : 16].tolist() == p  # left-padded: the prompt ends where the new tokens start


def test_rows_are_cut_at_their_first_stop_id(model, alone):
    graphdef, params = model
    stop = alone[0][3]  # a token the first prompt writes at its 4th step
    out = generate_batched(graphdef, CFG, params, Letters(), PROMPTS, NEW, stop_ids=[stop], batch_size=2)
    for got, free, stopped in zip(out.ids, alone, out.stopped):
        assert got == until_stop(free, [stop]) and stopped == (stop in free)
    assert out.ids[0] == alone[0][: alone[0].index(stop)] and out.stopped[0]


def test_more_prompts_than_rows_take_slots_with_a_seed_from_all_prompts(model):
    graphdef, params = model
    seen = []
    out = generate_batched(graphdef, CFG, params, Letters(), PROMPTS, 3, batch_size=2, seed=lambda batch: seen.append(batch) or 7,
                           temperature=1.0)
    assert seen == [PROMPTS]
    assert out.rows_NxTM.shape == (5, max(map(len, PROMPTS)) + 3)
    # A prompt's samples follow the seed and the prompts, not how many rows decode at once.
    again = generate_batched(graphdef, CFG, params, Letters(), PROMPTS, 3, batch_size=3, seed=7, temperature=1.0)
    assert again.ids == out.ids


def test_one_batch_takes_a_seed_from_its_prompts(model):
    graphdef, params = model
    seen = []
    out = generate_batched(graphdef, CFG, params, Letters(), PROMPTS[:2], 3, seed=lambda batch: seen.append(batch) or 7, temperature=1.0)
    assert seen == [PROMPTS[:2]]
    again = generate_batched(graphdef, CFG, params, Letters(), PROMPTS[:2], 3, seed=7, temperature=1.0)
    assert again.ids == out.ids


def test_the_pad_token_changes_nothing(model):
    graphdef, params = model

    class PadThree(Letters):
        pad_id = 3

    for temperature in (0.0, 1.0):
        runs = [generate_batched(graphdef, CFG, params, tok, PROMPTS, NEW, batch_size=2, prompt_len=12, seed=5, temperature=temperature)
                for tok in (Letters(), PadThree())]
        assert runs[0].ids == runs[1].ids
