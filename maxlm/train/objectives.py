"""What each task minimizes: `objective(params, batch, ref_params) -> (loss_sum, sums)`.

Objectives return sums, never means: `sums["count"]` is the denominator (target tokens for
language modelling, pairs for RM/DPO), every `*_sum` entry is reported divided by it, and
other entries (`tokens`) are reported as they are. So gradient accumulation and several
processes give the exact global mean.

Batches: language modelling rows are [B, T]; pairs (RM, DPO) are [B, 2, T] with the chosen
completion at index 0 and the rejected one at 1 (segment_ids 1 on real tokens, 0 on right
padding; loss_mask 1 on the completion's tokens), plus `pair_mask` [B] (0 on padding pairs)
and, for RM, `margin` [B].
Letters: B batch (pairs), T length, V vocab.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from maxlm.config import Config, TrainConfig
from maxlm.models.llama import causal_segment_mask
from maxlm.models.params import bind
from maxlm.train import rl
from maxlm.train.head_loss import chunk_count, fused_next_token_loss
from maxlm.train.losses import next_targets, next_token_weights, preference_loss, reward_loss, sequence_logps, token_logprobs

Objective = Callable[[Any, dict, Any], tuple[jax.Array, dict]]


def language_model(graphdef: nnx.GraphDef, z_loss: float, loss_chunks: int = TrainConfig.loss_chunks) -> Objective:
    """Returns the next-token objective (pretrain, and SFT whose loss_mask keeps only responses)."""

    def objective(params, batch, ref_params=None):
        tokens, seg = batch["tokens"], batch["segment_ids"]
        model = bind(graphdef, params)
        hidden, _ = model.hidden(tokens, batch["positions"], causal_segment_mask(seg))
        w = next_token_weights(seg, batch["loss_mask"])
        loss, (nll, z) = fused_next_token_loss(hidden, model.head(), next_targets(tokens), w, z_loss, chunk_count(tokens.shape[1], loss_chunks))
        processed = jnp.sum(seg > 0).astype(jnp.float32)  # for throughput; count = trained
        return loss, {"loss_sum": nll, "z_loss_sum": z, "count": jnp.sum(w), "tokens": processed}

    return objective


def _flat_pairs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    # [B, 2, T] -> [2B, T]: merging the leading dims keeps each device's rows on that device.
    b, _, t = batch["tokens"].shape
    return tuple(batch[k].reshape(2 * b, t) for k in ("tokens", "segment_ids", "positions", "loss_mask"))


def pool_scores(scores_BxT: jax.Array, seg_BxT: jax.Array, mask_BxT: jax.Array, pooling: str) -> jax.Array:
    """Returns one reward per right-padded row [B] f32: the head at the last real token, or its mean where mask_BxT is 1."""
    if pooling == "mean":
        w = mask_BxT.astype(jnp.float32) * (seg_BxT > 0)
        return jnp.sum(scores_BxT * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)
    last = jnp.maximum(jnp.sum(seg_BxT > 0, axis=-1) - 1, 0)
    return jnp.take_along_axis(scores_BxT, last[:, None], axis=-1)[:, 0]


def pair_rewards(graphdef: nnx.GraphDef, params, batch: dict, pooling: str = "last") -> jax.Array:
    """Returns the scalar head's reward of each completion (`rm.pooling` over its tokens), [B, 2] f32."""
    tokens, seg, pos, mask = _flat_pairs(batch)
    model = bind(graphdef, params)
    hidden, _ = model.hidden(tokens, pos, causal_segment_mask(seg))
    return pool_scores(model.scores(hidden), seg, mask, pooling).reshape(-1, 2)


def reward_model(graphdef: nnx.GraphDef, center_coef: float, pooling: str = "last") -> Objective:
    """Returns the Bradley-Terry objective of a scalar-head reward model on pairs."""

    def objective(params, batch, ref_params=None):
        r = pair_rewards(graphdef, params, batch, pooling)
        valid = batch["pair_mask"].astype(jnp.float32)
        loss = reward_loss(r[:, 0], r[:, 1], batch.get("margin"), center_coef) * valid
        diff = (r[:, 0] - r[:, 1]) * valid
        sums = {
            "loss_sum": jnp.sum(loss),
            "accuracy_sum": jnp.sum((r[:, 0] > r[:, 1]) * valid),
            "margin_sum": jnp.sum(diff),
            "chosen_reward_sum": jnp.sum(r[:, 0] * valid),
            "rejected_reward_sum": jnp.sum(r[:, 1] * valid),
            "count": jnp.sum(valid),
            "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
        }
        return sums["loss_sum"], sums

    return objective


def completion_logps(graphdef: nnx.GraphDef, params, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Returns (summed log-probs of each completion [B, 2], its token count [B, 2]), f32."""
    tokens, seg, pos, mask = _flat_pairs(batch)
    logits = bind(graphdef, params)(tokens, seg, pos)
    logp, _ = token_logprobs(logits, next_targets(tokens))
    total, count = sequence_logps(logp, next_token_weights(seg, mask))
    return total.reshape(-1, 2), count.reshape(-1, 2)


def preference(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns the DPO-family objective (`dpo.kind`); sigmoid/ipo/hinge compare with `ref_params`,
    or with the batch's `ref_logps` [B, 2] when the reference was scored up front (dpo.precompute_ref)."""
    d = cfg.dpo

    def objective(params, batch, ref_params=None):
        logps, counts = completion_logps(graphdef, params, batch)
        ref = None
        if "ref_logps" in batch:  # dpo.precompute_ref: scored once when the run started
            ref = batch["ref_logps"]
        elif ref_params is not None:
            ref = jax.lax.stop_gradient(completion_logps(graphdef, ref_params, batch)[0])
        # ORPO's NLL on the chosen completion, token-averaged as in its paper.
        nll = -logps[:, 0] / jnp.maximum(counts[:, 0], 1.0) if d.kind == "orpo" else None
        out = preference_loss(
            logps[:, 0], logps[:, 1], None if ref is None else ref[:, 0], None if ref is None else ref[:, 1],
            kind=d.kind, beta=d.beta, label_smoothing=d.label_smoothing, gamma=d.gamma,
            chosen_count=counts[:, 0], rejected_count=counts[:, 1], chosen_nll=nll,
        )
        valid = batch["pair_mask"].astype(jnp.float32)
        margin = out.chosen_rewards_B - out.rejected_rewards_B
        sums = {
            "loss_sum": jnp.sum(out.loss_B * valid),
            "accuracy_sum": jnp.sum((margin > 0) * valid),
            "margin_sum": jnp.sum(margin * valid),
            "chosen_reward_sum": jnp.sum(out.chosen_rewards_B * valid),
            "rejected_reward_sum": jnp.sum(out.rejected_rewards_B * valid),
            "chosen_logp_sum": jnp.sum(logps[:, 0] * valid),
            "rejected_logp_sum": jnp.sum(logps[:, 1] * valid),
            "count": jnp.sum(valid),
            "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
        }
        return sums["loss_sum"], sums

    return objective


def _policy_forward(graphdef: nnx.GraphDef, params, batch: dict, values: bool) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Returns (log p of each next token [R, S], logits [R, S, V], value-head outputs [R, S] or None)."""
    model = bind(graphdef, params)
    hidden, _ = model.hidden(batch["tokens"], batch["positions"], causal_segment_mask(batch["segment_ids"]))
    logits = model.logits(hidden)
    return token_logprobs(logits, next_targets(batch["tokens"]))[0], logits, model.scores(hidden) if values else None


def rollout_scores(graphdef: nnx.GraphDef, cfg: Config, params, batch: dict, ref_params=None) -> dict:
    """Returns what the behaviour policy (and the reference) say of a rollout batch, per next-token position:
    `old_logp` [R, S], `ref_logp` [R, S] (with ref_params) and, for ppo, the value head's `old_values` [R, S]."""
    logp, _, values = _policy_forward(graphdef, params, batch, cfg.task == "ppo")
    out = {"old_logp": logp}
    if values is not None:
        out["old_values"] = values
    if ref_params is not None:
        out["ref_logp"] = _policy_forward(graphdef, ref_params, batch, False)[0]
    return jax.lax.stop_gradient(out)


def policy_gradient(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns the PPO / GRPO objective on prepared rollout rows (see steps.rollout_step).

    Rows ([R, S], left-padded prompt then completion) carry, per next-token position, the
    behaviour policy's `old_logp` and the `advantages`; ppo adds `old_values` and `returns` and
    adds vf_coef x the clipped value loss; grpo with a reference adds kl_coef x KL(policy || ref)
    from `ref_logp` to the loss (ppo has it in the rewards instead). Losses are token-level sums:
    every completion token weighs the same (as in DAPO / Dr. GRPO and OpenRLHF's token mean).
    """
    r = cfg.rl
    ppo = cfg.task == "ppo"

    def objective(params, batch, ref_params=None):
        w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
        logp, logits, values = _policy_forward(graphdef, params, batch, ppo)
        pg_sum, count, clip_sum = rl.ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], w, r.clip_eps)
        sg = jax.lax.stop_gradient
        sums = {
            "policy_loss_sum": pg_sum,
            "entropy_sum": jnp.sum(sg(rl.entropy_from_logits(logits)) * w),
            "clipfrac_sum": clip_sum,
            # How far the updates moved the policy from the one that sampled (k3, >= 0).
            "approx_kl_sum": jnp.sum(sg(rl.kl_penalty(logp, batch["old_logp"], "k3")) * w),
            "count": count,
            "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
        }
        loss = pg_sum
        if ppo:
            vf_sum, _, vclip_sum = rl.ppo_value_loss(values, batch["old_values"], batch["returns"], w, r.value_clip_eps)
            loss = loss + r.vf_coef * vf_sum
            sums |= {"value_loss_sum": vf_sum, "value_clipfrac_sum": vclip_sum}
        elif "ref_logp" in batch:
            kl_sum = jnp.sum(rl.kl_penalty(logp, batch["ref_logp"], r.kl_estimator) * w)
            loss = loss + r.kl_coef * kl_sum
        sums["loss_sum"] = loss
        return loss, sums

    return objective


def needs_reference(cfg: Config) -> bool:
    """Returns whether the task compares against a frozen reference model."""
    if cfg.task == "dpo":
        return cfg.dpo.kind in ("sigmoid", "ipo", "hinge")
    if cfg.task == "grpo":
        return cfg.rl.kl_coef > 0
    return cfg.task == "ppo" and (cfg.rl.kl_coef > 0 or cfg.rl.kl_target > 0)


def for_task(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns the objective of `cfg.task`."""
    if cfg.task in ("pretrain", "sft"):
        return language_model(graphdef, cfg.train.z_loss, cfg.train.loss_chunks)
    if cfg.task == "rm":
        return reward_model(graphdef, cfg.rm.center_coef, cfg.rm.pooling)
    if cfg.task == "dpo":
        return preference(graphdef, cfg)
    if cfg.task in ("ppo", "grpo"):
        return policy_gradient(graphdef, cfg)
    raise ValueError(f"task {cfg.task!r} has no gradient objective here")


def report(sums: dict) -> dict:
    """Returns the logged metrics of `sums`: each `x_sum` as x = sum / count, the rest as they are."""
    count = jnp.maximum(sums["count"], 1.0)
    return {(k[:-4] if k.endswith("_sum") else k): (v / count if k.endswith("_sum") else v) for k, v in sums.items()}
