"""RL rollouts: the training layout of sampled rows agrees with the sampler (runs: test_ppo.py)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import Config, DataConfig, MeshConfig, ModelConfig, RLConfig, SourceConfig, TrainConfig
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
    batch, _ = rollouts(params, iter([np.array([0, 1, 2, 3])]), 1)
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


def scripted_services(answer_of: dict, reply, seeds: list):
    """Services whose `generate` writes `reply(prompt index, row in group, seed) -> (correct?, length)` completions."""
    from types import SimpleNamespace

    from maxlm.tasks.task import Services

    def generate(graphdef, model_cfg, params, tokenizer, prompts, max_new_tokens, *, stop_ids, prompt_len, seed, **sampling):
        seeds.append(seed)
        rows = np.full((len(prompts), prompt_len + max_new_tokens), 3, np.int32)
        logp = np.zeros((len(prompts), max_new_tokens), np.float32)
        texts = []
        for i, ids in enumerate(prompts):
            rows[i, prompt_len - len(ids):prompt_len] = ids
            p = answer_of[tuple(ids)][0]
            correct, length = reply(p, i % 2, seed)
            if length < max_new_tokens:
                rows[i, prompt_len + length - 1] = stop_ids[0]
            logp[i, :length] = row_logp(p, i % 2)  # a log-prob that names its row
            texts.append(answer_of[tuple(ids)][1] if correct else "no")
        return SimpleNamespace(rows_NxTM=rows, texts=texts, logp_NxM=logp)

    return Services(mesh=None, log=print, reference=None, generate=generate, reward_model=None)


def row_logp(prompt: int, j: int) -> float:
    """The scripted sampler's log-prob of every token of completion j of prompt `prompt`."""
    return -(prompt + 1) - 0.5 * j


def assert_sample_logp_follows_its_row(batch, answer_of, lengths):
    """Each row's sample_logp is its own completion's: row_logp of its prompt and place in the group, on its `lengths` tokens."""
    for r, p in enumerate(prompt_of_rows(batch, answer_of)):
        want = np.zeros(batch["tokens"].shape[1], np.float32)
        want[39 : 39 + lengths[r]] = row_logp(p, r % 2)  # the position before each completion token (P = 40)
        np.testing.assert_array_equal(batch["sample_logp"][r], want)


def scripted_run(tokenizer, reply, **rl):
    """(RolloutBatches over builtin:arithmetic rows 0:40 with the scripted sampler, seeds it was called with, a twin prompt iterator)."""
    from maxlm.tasks.rl import RolloutBatches
    from maxlm.tasks.rl.rollouts import make_rollouts, prompt_batches

    cfg = Config(task="grpo", data=DataConfig(train_files=[SourceConfig(path="builtin:arithmetic", rows="0:40")]),
                 train=TrainConfig(global_batch_size=4, seed=3),
                 rl=RLConfig(group_size=2, max_prompt_len=40, max_new_tokens=8, **rl))
    seeds: list = []
    prompts = load_prompts(cfg, tokenizer, cfg.data.train_files)
    answer_of = {tuple(ids): (i, prompts.answers[i]) for i, ids in enumerate(prompts.ids)}
    rollouts, iterator = make_rollouts(cfg, tokenizer, None, scripted_services(answer_of, reply, seeds), False)
    return RolloutBatches(rollouts, iterator), seeds, iter(prompt_batches(cfg, prompts, 0, 1)), answer_of


def round_seed(step, k):
    return int(np.random.SeedSequence([3, step] + ([k] if k else [])).generate_state(1)[0])


def prompt_of_rows(batch, answer_of):
    """The prompt index of each row of a laid-out batch (its prompt's tokens, the padding dropped)."""
    prompt = batch["tokens"][:, :40] * (batch["segment_ids"][:, :40] > 0)
    return [answer_of[tuple(int(t) for t in row if t)][0] for row in prompt]


def test_dynamic_sampling_refills_with_informative_groups_in_sampling_order(tokenizer):
    # Even prompts: the group's first completion is right, the second wrong; odd prompts: both wrong.
    reply = lambda p, j, seed: (p % 2 == 0 and j == 0, 4)
    batches, seeds, twin, answer_of = scripted_run(tokenizer, reply, dynamic_sampling=True, max_sampling_rounds=4)
    batch, metrics = batches.next(None, 1)
    # By hand: draw prompt batches until 4 even prompts have been seen (at most 4 batches).
    kept, dropped, rounds = [], 0, 0
    while len(kept) < 4 and rounds < 4:
        drawn = [int(p) for p in next(twin)]
        rounds += 1
        kept += [p for p in drawn if p % 2 == 0]
        dropped += sum(p % 2 for p in drawn)
    assert rounds > 1  # the data makes the step refill
    assert prompt_of_rows(batch, answer_of) == [p for p in kept[:4] for _ in range(2)]
    assert seeds == [round_seed(1, k) for k in range(rounds)]
    assert metrics["dropped_groups"] == dropped and metrics["padded_groups"] == 0 and metrics["sampling_rounds"] == rounds
    # each kept group scores [1, 0]: advantages ±0.5 / (std 0.7071 + 1e-6)
    np.testing.assert_allclose(batch["advantages"], [0.5 / (0.5 ** 0.5 + 1e-6), -0.5 / (0.5 ** 0.5 + 1e-6)] * 4, rtol=1e-6)
    assert batch["loss_mask"].sum(axis=1).tolist() == [4] * 8
    assert_sample_logp_follows_its_row(batch, answer_of, [4] * 8)  # refilled rows bring their own sampler log-probs
    # The prompt iterator's position is the checkpointed state: a restored twin continues exactly.
    state = batches.get_state()
    again, _, _, _ = scripted_run(tokenizer, reply, dynamic_sampling=True, max_sampling_rounds=4)
    again.set_state(state)
    b2, b2_again = batches.next(None, 2)[0], again.next(None, 2)[0]
    for k in b2:
        np.testing.assert_array_equal(b2[k], b2_again[k])


def test_dynamic_sampling_short_of_groups_pads_with_masked_dropped_groups(tokenizer):
    # Only prompts divisible by 7 get a right answer; lengths differ by row but overlong shaping is off.
    reply = lambda p, j, seed: (p % 7 == 0 and j == 1, 3 + j)
    batches, seeds, twin, answer_of = scripted_run(tokenizer, reply, dynamic_sampling=True, max_sampling_rounds=2)
    batch, metrics = batches.next(None, 5)
    drawn = [int(p) for _ in range(2) for p in next(twin)]
    informative = [p for p in drawn if p % 7 == 0][:4]
    uninformative = [p for p in drawn if p % 7][: 4 - len(informative)]
    assert 0 < len(informative) < 4  # the data leaves the step short
    assert prompt_of_rows(batch, answer_of) == [p for p in informative + uninformative for _ in range(2)]
    trained = np.repeat([1] * len(informative) + [0] * len(uninformative), 2)
    np.testing.assert_array_equal(batch["loss_mask"].sum(axis=1) > 0, trained > 0)
    assert np.all(batch["advantages"][trained == 0] == 0) and np.all(batch["advantages"][trained > 0] != 0)
    assert batch["tokens"].shape == (8, 48)  # the step's shape does not change
    assert_sample_logp_follows_its_row(batch, answer_of, [3 + r % 2 for r in range(8)])  # kept and padding rows alike
    assert metrics["padded_groups"] == len(uninformative) and metrics["sampling_rounds"] == 2 == len(seeds)
    assert metrics["dropped_groups"] == 8 - sum(p % 7 == 0 for p in drawn)


def test_overlong_shaping_lowers_the_scores_before_the_advantages(tokenizer):
    # All answers right; lengths 2 (first row of a group) and 8 = max_new_tokens (second): buffer 3, penalty 0.6.
    reply = lambda p, j, seed: (True, 2 if j == 0 else 8)
    batches, _, _, _ = scripted_run(tokenizer, reply, overlong_buffer=3, overlong_penalty=0.6, scale_rewards="none")
    batch, metrics = batches.next(None, 1)
    # scores 1 and 1 - 0.6 x (8 - 5) / 3 = 0.4: centred ±0.3 with no std division
    np.testing.assert_allclose(batch["advantages"], [0.3, -0.3] * 4, rtol=1e-5)
    assert metrics["reward_mean"] == 1.0 and metrics["overlong_penalty"] == pytest.approx(0.3)
