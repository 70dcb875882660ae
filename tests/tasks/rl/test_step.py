"""The PPO / GRPO rollout step against re-derivations. On rows laid out from raw rollouts (left-padded
prompts of different lengths, a completion that stops early, one that fills every slot): the
per-token loss mask and advantages of step.prepare_rollouts, and the loss of each rl.* menu variant
through train_step with gradient accumulation, against plain-loop numpy re-derivations on each row
run alone. Then where rl.kl_in puts the KL to the reference (advantages by numpy, with each
rl.advantage and dynamic sampling's padding groups), rl.target_approx_kl's early stop (a plain loop
of the same updates, its KL in numpy) and ppo's value warm-up (the policy unchanged, bit for bit)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maxlm.config import Config, MeshConfig, ModelConfig, RLConfig, TrainConfig
from maxlm.losses.logprobs import next_token_weights
from maxlm.models import params as params_lib
from maxlm.models.llama import causal_segment_mask
from maxlm.optim import optimizer
from maxlm.optim.update import microbatches, train_step
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks.rl.objective import policy_gradient
from maxlm.tasks.rl.rollouts import advantages, training_rows
from maxlm.tasks.rl.step import prepare_rollouts, rollout_step, weigh_tokens

P, N, STOP, G = 5, 6, 7, 2
PROMPT_LENS = np.array([5, 5, 2, 2, 3, 3, 4, 4])  # per row: G rows per prompt
SCORES = np.array([1.0, 0.0, 0.5, 0.5, 1.0, 0.25, 0.0, 2.0], np.float32)  # the second group's are equal
MODEL = ModelConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, dtype="float32", max_seq_len=32)


def raw_rows() -> np.ndarray:
    """Sampled rows [R, P + N]: junk in the prompt padding, completions of 3, 6 (no stop), 1, 4, 6 (stop last), 2, 6, 5 tokens."""
    rows = np.random.default_rng(0).integers(8, 50, (len(PROMPT_LENS), P + N))
    for r, stop_at in {0: 2, 2: 0, 3: 3, 4: 5, 5: 1, 7: 4}.items():
        rows[r, P + stop_at] = STOP
    rows[5, P + 3] = STOP  # a second stop after the first: the completion still ends at the first
    return rows


def completion_len(row: np.ndarray) -> int:
    """The completion's length by hand: up to and including its first stop, else every slot."""
    for k in range(N):
        if row[P + k] == STOP:
            return k + 1
    return N


def advantages_by_hand(scores, kind: str, scale: str) -> list[float]:
    """Each row's advantage by plain loops (unbiased stds, eps 1e-6)."""
    def std(xs):
        m = sum(xs) / len(xs)
        return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5

    s = [float(x) for x in scores]
    groups = [s[i:i + G] for i in range(0, len(s), G)]
    centred = [x - sum(g) / G for g in groups for x in g]
    out = []
    for i, x in enumerate(s):
        g = groups[i // G]
        if kind == "reinforce_pp":
            out.append(centred[i] / (std(centred) + 1e-6))
            continue
        others = [g[j] for j in range(G) if j != i % G]
        a = x - sum(others) / len(others) if kind == "rloo" else x - sum(g) / G
        if scale != "none":
            a /= (std(g) if scale == "group" else std(s)) + 1e-6
        out.append(a)
    return out


def row_alone_logps(graphdef, params) -> list[np.ndarray]:
    """log p of each next token [n - 1] f64 of each laid-out row run alone (unpadded, positions from 0)."""
    batch = training_rows(raw_rows(), PROMPT_LENS, P, [STOP])

    @jax.jit
    def logits(params, tokens):
        model = params_lib.bind(graphdef, params)
        pos = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
        hidden, _ = model.hidden(tokens, pos, causal_segment_mask(jnp.ones_like(tokens)))
        return model.logits(hidden)[0]

    out = []
    for tokens, segments in zip(batch["tokens"], batch["segment_ids"]):
        ids = tokens[segments > 0]
        x = np.asarray(logits(params, jnp.asarray([ids], jnp.int32)), np.float64)
        x = x - x.max(-1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
        out.append(logp[np.arange(len(ids) - 1), ids[1:]])
    return out


@pytest.fixture(scope="module")
def model():
    """(graphdef, {old, new, ref: params}, {old, new, ref: each row's log-probs run alone})."""
    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
    graphdef, _, _ = params_lib.abstract(MODEL)
    old = params_lib.init(MODEL, mesh, 0)
    ref = params_lib.init(MODEL, mesh, 1)
    new = jax.tree.map(lambda a, b: a + 0.3 * (b - a), old, ref)  # near the old policy: ratios near 1, some clipped
    params = {"old": old, "new": new, "ref": ref}
    return graphdef, params, {k: row_alone_logps(graphdef, p) for k, p in params.items()}


def grpo_cfg(**rl) -> Config:
    """A grpo config as the loader makes it: kl_in "loss" (grpo's per-task default) unless given."""
    rl = {"kl_in": "loss"} | rl
    return Config(task="grpo", model=MODEL, rl=RLConfig(group_size=G, max_prompt_len=P, max_new_tokens=N, **rl))


def laid_out(cfg: Config) -> dict:
    """The batch Rollouts hands the step for raw_rows() and SCORES."""
    batch = training_rows(raw_rows(), PROMPT_LENS, P, [STOP])
    # sample_logp: only rl.tis_cap (off here) and the logged tis_ratio_* read it.
    return batch | {"advantages": advantages(cfg.rl, SCORES, np.ones_like(SCORES)), "sample_logp": np.zeros(batch["tokens"].shape, np.float32)}


@pytest.mark.parametrize("kind, scale", [("group", "group"), ("group", "batch"), ("group", "none"), ("rloo", "group"),
                                         ("rloo", "none"), ("reinforce_pp", "group")])
def test_prepared_mask_and_advantages_match_the_raw_rows(model, kind, scale):
    graphdef, params, _ = model
    cfg = grpo_cfg(advantage=kind, scale_rewards=scale, kl_coef=0.0)
    got, stats = prepare_rollouts(graphdef, cfg, False, params["old"], laid_out(cfg), None, 0.0)
    adv = advantages_by_hand(SCORES, kind, scale)
    rows = raw_rows()
    want_mask = np.zeros((len(rows), P + N))
    for r, row in enumerate(rows):
        # column c predicts the token at c + 1: the completion's tokens sit at P .. P + L - 1
        for c in range(P - 1, P - 1 + completion_len(row)):
            want_mask[r, c] = 1.0
    w = np.asarray(next_token_weights(jnp.asarray(got["segment_ids"]), jnp.asarray(got["loss_mask"])))
    np.testing.assert_array_equal(w, want_mask)
    np.testing.assert_allclose(np.asarray(got["advantages"]), np.asarray(adv)[:, None] * want_mask, rtol=1e-5, atol=1e-6)
    assert float(stats["count"]) == want_mask.sum() == 3 + 6 + 1 + 4 + 6 + 2 + 6 + 5
    lengths = want_mask.sum(axis=1)
    for agg, per_row in [("token_mean", np.ones(len(rows))), ("sequence_mean", want_mask.sum() / (len(rows) * lengths)),
                         ("constant", np.full(len(rows), want_mask.sum() / (len(rows) * N)))]:
        weights = weigh_tokens(dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, loss_agg=agg)), got)["loss_weights"]
        np.testing.assert_allclose(np.asarray(weights), per_row[:, None] * want_mask, rtol=1e-6, err_msg=agg)


@pytest.mark.parametrize("kind, scale", [("group", "group"), ("group", "batch"), ("rloo", "none"), ("reinforce_pp", "group")])
def test_grpo_kl_in_reward_runs_rl_advantage_on_score_minus_kl_leaving_padding_groups_out(model, kind, scale):
    graphdef, params, logps = model
    cfg = grpo_cfg(advantage=kind, scale_rewards=scale, kl_in="reward", kl_estimator="k1", kl_coef=0.3)
    trained = np.array([1, 1, 0, 0, 1, 1, 1, 1], np.float32)  # the equal-score group pads the batch, as dynamic sampling leaves it
    batch = laid_out(cfg)
    batch |= {"scores": SCORES, "trained": trained, "loss_mask": batch["loss_mask"] * trained[:, None]}
    got, _ = prepare_rollouts(graphdef, cfg, False, params["old"], batch, params["ref"], jnp.float32(0.3))
    shaped, masks = [], []
    for i in range(len(PROMPT_LENS)):
        start, L = PROMPT_LENS[i], completion_len(raw_rows()[i])
        acts = range(start - 1, start - 1 + L)
        shaped.append(float(SCORES[i]) - 0.3 * sum(logps["old"][i][t] - logps["ref"][i][t] for t in acts))
        mask = np.zeros(P + N)
        mask[P - 1 : P - 1 + L] = trained[i]
        masks.append(mask)
    kept = advantages_by_hand([x for x, v in zip(shaped, trained) if v], kind, scale)  # the valid groups alone
    want = iter(kept)
    for i, v in enumerate(trained):
        a = next(want) if v else 0.0
        np.testing.assert_allclose(np.asarray(got["advantages"][i]), a * masks[i], rtol=1e-4, atol=1e-5, err_msg=f"row {i}")
    assert "trained" not in got and "scores" not in got
    # The KL moved them off the host's advantages of the scores alone (a group std of two rows leaves them at ±1/√2).
    if (kind, scale) != ("group", "group"):
        host = np.asarray(batch["advantages"]) * np.array([m.sum() for m in masks])
        assert np.max(np.abs(np.asarray(got["advantages"]).sum(1) - host)) > 1e-3


def loss_by_hand(logps: dict, cfg: Config) -> tuple[float, float]:
    """(loss, policy loss) of the variant by plain loops on each row run alone: the rl.loss_agg mean of the
    clipped surrogate plus kl_coef x k3 KL to ref, over every completion token of the batch."""
    r = cfg.rl
    adv = advantages_by_hand(SCORES, r.advantage, r.scale_rewards)
    per_row, lengths = [], []
    for i in range(len(PROMPT_LENS)):
        start, L = PROMPT_LENS[i], completion_len(raw_rows()[i])
        acts = range(start - 1, start - 1 + L)  # the positions that predict the completion
        lp, lp_old, lp_ref = (logps[k][i] for k in ("new", "old", "ref"))
        seq_ratio = np.exp(sum(lp[t] - lp_old[t] for t in acts) / L)
        pg, kl = [], []
        for t in acts:
            ratio = seq_ratio if r.importance_ratio == "sequence" else np.exp(lp[t] - lp_old[t])
            pg.append(max(-adv[i] * ratio, -adv[i] * min(max(ratio, 1 - r.clip_eps_low), 1 + r.clip_eps_high)))
            d = lp_ref[t] - lp[t]
            kl.append(np.exp(d) - 1 - d)
        per_row.append((pg, kl))
        lengths.append(L)
    rows, tokens = len(per_row), sum(lengths)

    def mean(which: int) -> float:
        if r.loss_agg == "token_mean":
            return sum(sum(x[which]) for x in per_row) / tokens
        if r.loss_agg == "sequence_mean":
            return sum(sum(x[which]) / L for x, L in zip(per_row, lengths)) / rows
        return sum(sum(x[which]) for x in per_row) / (rows * N)

    return mean(0) + r.kl_coef * mean(1), mean(0)


VARIANTS = [
    dict(),  # today's grpo: group advantages, token mean, symmetric 0.2 clip
    dict(advantage="rloo", scale_rewards="none", loss_agg="sequence_mean", clip_eps_low=0.05, clip_eps_high=0.08),
    dict(scale_rewards="none", loss_agg="constant", clip_eps_low=0.05, clip_eps_high=0.28),  # Dr. GRPO + clip-higher
    dict(advantage="reinforce_pp", loss_agg="token_mean", clip_eps_low=0.05, clip_eps_high=0.1),
    dict(importance_ratio="sequence", loss_agg="sequence_mean", clip_eps_low=0.01, clip_eps_high=0.015),  # GSPO
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_each_variants_loss_matches_numpy_over_accumulated_microbatches(model, variant):
    graphdef, params, logps = model
    new, ref = params["new"], params["ref"]
    cfg = grpo_cfg(kl_coef=0.1, **variant)
    prepared, _ = prepare_rollouts(graphdef, cfg, False, params["old"], laid_out(cfg), ref, 0.0)
    minibatch = weigh_tokens(cfg, prepared)
    want_loss, want_pg = loss_by_hand(logps, cfg)
    norms = []
    for accum in (1, 4):  # microbatches of 8 and 2 rows: the mean must be the whole minibatch's
        train = TrainConfig(grad_accum_steps=accum, learning_rate=0.0, warmup_steps=0, global_batch_size=8)
        tx = optimizer.optimizer(train)
        _, _, m = jax.jit(train_step(policy_gradient(graphdef, cfg, False), tx, train))(new, tx.init(new), minibatch, ref)
        np.testing.assert_allclose(float(m["loss"]), want_loss, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(float(m["policy_loss"]), want_pg, rtol=1e-4, atol=1e-6)
        norms.append(float(m["grad_norm"]))
    np.testing.assert_allclose(norms, norms[0], rtol=1e-4)
    assert abs(want_pg) > 1e-3
    if cfg.rl.clip_eps_low < 0.2:
        assert float(m["clipfrac"]) > 0  # the variant's clip range is exercised


TRAIN = TrainConfig(learning_rate=3e-2, warmup_steps=0, schedule="constant", global_batch_size=4)


def _batch(tiny, task, scores=True):
    """The fixture's rows as Rollouts hands them to the step (sample_logp: the training forward's own, as a sampler at T = 1 gives)."""
    b = dict(tiny.batch) | {"sample_logp": (tiny.logp(tiny.params) * tiny.w).astype(np.float32)}
    if task == "grpo":
        s = tiny.scores.reshape(-1, 2)
        b["advantages"] = ((s - s.mean(1, keepdims=True)) / (s.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1).astype(np.float32)
    if task == "ppo" or scores:
        b["scores"] = tiny.scores
    if task == "grpo" and scores:
        b["trained"] = np.ones(8, np.float32)
    return {k: jnp.asarray(v) for k, v in b.items()}


def test_grpo_with_the_kl_in_the_reward_groups_score_minus_the_completions_kl(tiny):
    cfg = Config(task="grpo", model=tiny.model, rl=RLConfig(group_size=2, kl_in="reward", kl_estimator="k1", minibatches=2))
    got, _ = prepare_rollouts(tiny.graphdef, cfg, False, tiny.params, _batch(tiny, "grpo"), tiny.ref, jnp.float32(0.7))
    lp, ref = tiny.logp(tiny.params), tiny.logp(tiny.ref)
    reward = [tiny.scores[r] - 0.7 * sum(lp[r, t] - ref[r, t] for t in np.nonzero(tiny.w[r])[0]) for r in range(8)]
    for g in range(4):
        a, b = reward[2 * g], reward[2 * g + 1]
        mean, std = (a + b) / 2, math.sqrt(((a - b) ** 2) / 2)  # the unbiased std of two
        for r, x in ((2 * g, a), (2 * g + 1, b)):
            np.testing.assert_allclose(np.asarray(got["advantages"][r]), (x - mean) / (std + 1e-6) * tiny.w[r], rtol=1e-4, atol=1e-5)
    # kl_in loss (grpo's default): the host's group advantages, untouched.
    cfg = Config(task="grpo", model=tiny.model, rl=RLConfig(group_size=2, kl_in="loss", minibatches=2))
    batch = _batch(tiny, "grpo", scores=False)
    got, _ = prepare_rollouts(tiny.graphdef, cfg, False, tiny.params, batch, tiny.ref, jnp.float32(0.7))
    np.testing.assert_array_equal(np.asarray(got["advantages"]), np.asarray(batch["advantages"])[:, None] * tiny.w)


def test_ppo_with_the_kl_in_the_loss_leaves_it_out_of_the_rewards(tiny):
    g = tiny.graphdef
    loss_cfg = Config(task="ppo", model=tiny.model, rl=RLConfig(kl_in="loss", minibatches=2))
    free_cfg = Config(task="ppo", model=tiny.model, rl=RLConfig(kl_in="reward", minibatches=2))
    got, stats = prepare_rollouts(g, loss_cfg, True, tiny.params, _batch(tiny, "ppo"), tiny.ref, jnp.float32(0.7))
    want, _ = prepare_rollouts(g, free_cfg, True, tiny.params, _batch(tiny, "ppo"), tiny.ref, jnp.float32(0.0))  # rewards: the score alone
    kl_rewarded, _ = prepare_rollouts(g, free_cfg, True, tiny.params, _batch(tiny, "ppo"), tiny.ref, jnp.float32(0.7))
    np.testing.assert_array_equal(np.asarray(got["returns"]), np.asarray(want["returns"]))
    np.testing.assert_array_equal(np.asarray(got["advantages"]), np.asarray(want["advantages"]))
    assert float(jnp.max(jnp.abs(kl_rewarded["returns"] - want["returns"]))) > 1e-3  # the KL would have moved them
    assert float(stats["kl"]) > 0  # still measured and logged


def _k3_mean(logp, old, w):
    on = np.nonzero(w)
    d = old[on] - logp[on]
    return float(np.mean(np.exp(d) - 1 - d))


def test_target_approx_kl_drops_the_update_that_measures_past_it_and_every_later_one(tiny):
    epochs, mbs = 3, 2
    base = Config(task="grpo", model=tiny.model, train=TRAIN, rl=RLConfig(group_size=2, kl_coef=0.0, epochs=epochs, minibatches=mbs))
    batch = _batch(tiny, "grpo", scores=False)
    args = {"kl_coef": np.float32(0), "step": np.int32(3)}
    tx = optimizer.optimizer(TRAIN, epochs * mbs)
    # The same updates by hand, in the step's shuffled order; each one's approx KL (k3) measured in numpy before it.
    prepared, _ = prepare_rollouts(tiny.graphdef, base, False, tiny.params, batch, None, jnp.float32(0))
    update = jax.jit(train_step(policy_gradient(tiny.graphdef, base, False), tx, TRAIN))
    keys = jax.random.split(jax.random.fold_in(jax.random.key(TRAIN.seed), 3), epochs)
    p, o, trail = tiny.params, tx.init(tiny.params), []
    for e in range(epochs):
        perm = jax.random.permutation(keys[e], 8)
        split = microbatches(jax.tree.map(lambda x: x[perm], prepared), mbs)
        for m in range(mbs):
            mb = jax.tree.map(lambda x: x[m], split)
            rows = np.asarray(perm).reshape(-1, mbs)[:, m]  # the strided split's rows
            kl = _k3_mean(tiny.logp(p)[rows], np.asarray(mb["old_logp"]), tiny.w[rows])
            p2, o2, metrics = update(p, o, weigh_tokens(base, mb))
            assert float(metrics["approx_kl"]) == pytest.approx(kl, rel=1e-3, abs=1e-7)
            trail.append((kl, p))
            p, o = p2, o2
    kls = [k for k, _ in trail]
    assert kls[0] < 1e-9 and max(kls) > 1e-3
    # A target the k-th update is the first to measure past.
    k = next(i for i in range(2, len(kls)) if kls[i] > max(kls[:i]) * 1.5)
    target = (max(kls[:k]) + kls[k]) / 2
    cfg = dataclasses.replace(base, rl=dataclasses.replace(base.rl, target_approx_kl=target))
    step = jax.jit(rollout_step(tiny.graphdef, cfg, tx, False))
    params, opt_state, m = step(tiny.params, tx.init(tiny.params), batch, None, args)
    assert float(m["updates"]) == k
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(trail[k][1])):  # after the first k updates (one more moves them ~1e-2)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=2e-5)  # one jit vs several: rounding
    np.testing.assert_allclose(float(m["approx_kl"]), np.mean(kls[:k]), rtol=1e-3, atol=1e-7)  # the updates done
    assert int(optax.tree_utils.tree_get(opt_state, "count")) == epochs * mbs  # the schedule still counts a whole rollout batch
    # Off (0): every update, as before.
    _, _, m = jax.jit(rollout_step(tiny.graphdef, base, tx, False))(tiny.params, tx.init(tiny.params), batch, None, args)
    assert float(m["updates"]) == epochs * mbs


def test_value_warmup_trains_the_head_and_leaves_the_policy_bit_for_bit(tiny):
    cfg = Config(task="ppo", model=tiny.model, train=TRAIN, rl=RLConfig(value_warmup_steps=2, kl_coef=0.0, epochs=2, minibatches=2))
    tx = optimizer.optimizer(TRAIN, 4)  # weight_decay 0.1: AdamW alone would move every decayed weight
    step = jax.jit(rollout_step(tiny.graphdef, cfg, tx, True))
    params, opt_state = jax.tree.map(jnp.array, tiny.params), tx.init(tiny.params)
    start = jax.tree.map(np.asarray, tiny.params)
    for s in (1, 2):
        params, opt_state, m = step(params, opt_state, _batch(tiny, "ppo"), None, {"kl_coef": np.float32(0), "step": np.int32(s)})
        assert float(m["policy_loss"]) == 0.0 and float(m["value_loss"]) > 0
    for k in start:
        same = all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(start[k]), jax.tree.leaves(params[k])))
        assert same == (k != "score_head"), k  # the head trained, nothing else moved
    np.testing.assert_array_equal(tiny.logp(params), tiny.logp(tiny.params))
    params, _, _ = step(params, opt_state, _batch(tiny, "ppo"), None, {"kl_coef": np.float32(0), "step": np.int32(3)})
    assert not np.array_equal(np.asarray(params["lm_head"]), start["lm_head"])  # step 3: the policy trains
