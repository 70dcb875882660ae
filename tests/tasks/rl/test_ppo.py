"""PPO: what one rollout batch turns into (log-probs, values, KL-penalized rewards, GAE, whitening)
against a per-row numpy re-derivation on each row run alone; and ppo and grpo runs that log their
metrics and resume exactly after kill -9."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxlm.config import Config, MeshConfig, ModelConfig, RLConfig
from maxlm.eval.generation import exact_match
from maxlm.infer.pretrained import from_pretrained
from maxlm.models import params as params_lib
from maxlm.models.llama import causal_segment_mask
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks.rl.rollouts import training_rows
from maxlm.tasks.rl.step import prepare_rollouts

REPO = Path(__file__).resolve().parents[3]


def log_softmax64(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def row_alone(graphdef, params, ids):
    """(log p of each next token [n-1] f64, value at each position [n] f64) of one unpadded row."""
    model = params_lib.bind(graphdef, params)
    tokens = jnp.asarray([ids], jnp.int32)
    pos = jnp.arange(len(ids), dtype=jnp.int32)[None]
    hidden, _ = model.hidden(tokens, pos, causal_segment_mask(jnp.ones_like(tokens)))
    logp = log_softmax64(model.logits(hidden)[0])
    head = np.asarray(params["score_head"], np.float64)
    values = np.asarray(hidden[0], np.float64) @ head
    return logp[np.arange(len(ids) - 1), ids[1:]], values


def expected_row(logp, ref_logp, values, start, score, kl_coef, gamma, lam):
    """Advantages and returns of one row's actions (positions start-1 .. n-2 predict the completion), by hand."""
    acts = list(range(start - 1, len(logp)))
    rewards = [-kl_coef * (logp[t] - ref_logp[t]) for t in acts]
    rewards[-1] += score
    adv, last = {}, 0.0
    for j in reversed(range(len(acts))):
        nxt = values[acts[j + 1]] if j + 1 < len(acts) else 0.0
        last = rewards[j] + gamma * nxt - values[acts[j]] + gamma * lam * last
        adv[acts[j]] = last
    return adv, {t: adv[t] + values[t] for t in acts}


def test_prepared_rollouts_match_each_row_run_alone():
    rng = np.random.default_rng(0)
    model = ModelConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=32, scalar_head=True)
    cfg = Config(task="ppo", model=model, rl=RLConfig(kl_estimator="k1", gamma=0.9, lam=0.8, minibatches=2, whiten_advantages=True))
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    graphdef, _, _ = params_lib.abstract(model)
    params = params_lib.init(model, mesh, 0)
    params["score_head"] = jnp.asarray(rng.normal(size=model.hidden_size), jnp.float32)  # nonzero values
    ref = params_lib.init(model, mesh, 1)
    P, N, stop = 5, 6, 7
    prompt_lens = np.array([5, 2, 3, 4])
    rows = rng.integers(8, 50, (4, P + N))
    rows[0, P + 2] = stop  # completions of 3, 6 (no stop), 1 and 4 tokens
    rows[2, P] = stop
    rows[3, P + 3] = stop
    batch = training_rows(rows, prompt_lens, P, [stop])
    scores = np.array([1.0, -0.5, 0.25, 2.0], np.float32)
    kl_coef = 0.3
    batch["sample_logp"] = np.zeros(rows.shape, np.float32)  # not sampled: only tis_ratio_* read it
    got, stats = prepare_rollouts(graphdef, cfg, True, params, {**batch, "scores": scores}, ref, jnp.float32(kl_coef))
    adv_raw, kl_all, cols_all = [], [], []
    for r in range(4):
        valid = np.flatnonzero(batch["segment_ids"][r])
        ids = rows[r, valid]
        lp, values = row_alone(graphdef, params, ids)
        ref_lp, _ = row_alone(graphdef, ref, ids)
        start = prompt_lens[r]  # index of the first completion token within the row alone
        adv, ret = expected_row(lp, ref_lp, values, start, scores[r], kl_coef, 0.9, 0.8)
        for t in adv:
            col = valid[t]  # the padded column of that action
            np.testing.assert_allclose(float(got["old_logp"][r, col]), lp[t], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(float(got["ref_logp"][r, col]), ref_lp[t], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(float(got["old_values"][r, col]), values[t], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(float(got["returns"][r, col]), ret[t], rtol=1e-4, atol=1e-4)
            adv_raw.append(adv[t])
            cols_all.append((r, col))
            kl_all.append(lp[t] - ref_lp[t])
    adv_raw = np.asarray(adv_raw)
    want = (adv_raw - adv_raw.mean()) / np.sqrt(adv_raw.var(ddof=1) + 1e-8)  # whitened over every action of the batch
    np.testing.assert_allclose([float(got["advantages"][r, c]) for r, c in cols_all], want, rtol=1e-4, atol=1e-4)
    mask = np.zeros_like(batch["loss_mask"])
    for r, c in cols_all:
        mask[r, c] = 1
    assert float(jnp.sum(jnp.abs(got["advantages"]) * (1 - mask))) == 0.0  # nothing off the actions
    np.testing.assert_allclose(float(stats["kl"]), np.mean(kl_all), rtol=1e-4)




def _cli(*args, background=False):
    import os
    import subprocess

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "maxlm.cli", "train", *map(str, args)]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _rows(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """A short configs/sft_arithmetic.yaml run (small model): the start of the RL runs below."""
    d = tmp_path_factory.mktemp("sft") / "run"
    _cli(REPO / "configs" / "sft_arithmetic.yaml", f"run_dir={d}", "train.steps=20", "model.hidden_size=64", "model.num_layers=2", "model.mlp_dim=128")
    return d


PER_TASK = {
    # An adaptive KL coefficient with a short horizon moves every step: the checkpoint must carry it.
    "ppo": (["rl.group_size=2", "rl.kl_target=0.01", "rl.kl_horizon=20"],
            {"kl_coef", "value_loss", "value_clipfrac", "approx_kl"}, ("reward_mean", "kl_coef"), ("loss", "kl", "value_loss")),
    # GRPO with the menu at once (one run: each resumed run costs a minute of the suite): two epochs of
    # minibatches, RLOO without std scaling, sequence-mean loss over accumulated microbatches, GSPO's
    # ratio with clip-higher, DAPO's dynamic sampling (the prompt iterator moves a varying number of
    # batches a step: the checkpoint must say where) and overlong shaping (it makes the groups differ).
    "grpo_menu": (["rl.group_size=4", "rl.epochs=2", "rl.minibatches=2", "train.grad_accum_steps=2", "rl.advantage=rloo", "rl.scale_rewards=none",
                   "rl.loss_agg=sequence_mean", "rl.importance_ratio=sequence", "rl.clip_eps_high=0.28", "rl.dynamic_sampling=true",
                   "rl.max_sampling_rounds=2", "rl.overlong_buffer=4"],
                  {"reward_std", "dropped_groups", "padded_groups", "sampling_rounds", "overlong_penalty", "approx_kl"},
                  ("reward_mean", "dropped_groups", "padded_groups", "sampling_rounds", "overlong_penalty"), ("loss", "kl", "policy_loss")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ppo", "grpo_menu"])
def test_rl_run_logs_its_metrics_and_resumes_exactly_after_kill_9(tmp_path, sft_run, name):
    import time

    task = name.split("_")[0]
    extra, keys, exact, close = PER_TASK[name]
    held_out = "data.eval_files=[{path: 'builtin:arithmetic@eval', rows: '0:40'}]"
    over = [f"train.init_from={sft_run}", "train.steps=6", "train.global_batch_size=4", "train.log_every=1", "train.eval_every=3",
            held_out, "checkpoint.interval_steps=3", *extra]
    cfg = REPO / "configs" / f"{task}_arithmetic.yaml"
    _cli(cfg, *over, f"run_dir={tmp_path / 'full'}")
    part = tmp_path / "part"
    proc = _cli(cfg, *over, f"run_dir={part}", background=True)
    deadline = time.time() + 600
    while not (part / "checkpoints" / "3").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=60)
    _cli(cfg, *over, f"run_dir={part}")
    full, again = _rows(tmp_path / "full"), _rows(part)
    assert sorted(full) == sorted(again) == list(range(7))  # step 0: the starting policy's held-out reward
    assert "eval_reward" in full[0] and "eval_reward" in full[3]
    # The in-run held-out reward is `maxlm eval exact-match` on the same prompts of the same checkpoint.
    start = exact_match(from_pretrained(str(sft_run)), "builtin:arithmetic@eval", "arithmetic_exact", 6, rows="0:40")
    assert start["n"] == 40 and full[0]["eval_reward"] == pytest.approx(start["accuracy"], abs=1e-9)
    last = exact_match(from_pretrained(str(tmp_path / "full")), "builtin:arithmetic@eval", "arithmetic_exact", 6, rows="0:40")
    assert full[6]["eval_reward"] == pytest.approx(last["accuracy"], abs=1e-9)
    assert {"reward_mean", "kl", "entropy", "clipfrac", "generation_fraction", "completion_tokens"} | keys <= set(full[1])
    assert full[1]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1 samples from the reference itself
    if task == "ppo":
        assert full[6]["kl_coef"] != full[1]["kl_coef"]  # the controller moved it
    assert any(full[s]["grad_norm"] > 0 for s in range(1, 7))  # it trains
    for s in range(1, 7):
        for k in exact:
            assert full[s][k] == again[s][k], (s, k)
        for k in close:
            assert full[s][k] == pytest.approx(again[s][k], rel=1e-6, abs=1e-7), (s, k)
