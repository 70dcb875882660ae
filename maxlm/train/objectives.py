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

from maxlm.config import Config
from maxlm.models.llama import causal_segment_mask
from maxlm.models.params import bind
from maxlm.train import rl
from maxlm.train.losses import next_token_loss, next_token_weights, preference_loss, reward_loss, sequence_logps, token_logprobs

Objective = Callable[[Any, dict, Any], tuple[jax.Array, dict]]


def language_model(graphdef: nnx.GraphDef, z_loss: float) -> Objective:
    """Returns the next-token objective (pretrain, and SFT whose loss_mask keeps only responses)."""

    def objective(params, batch, ref_params=None):
        logits = bind(graphdef, params)(batch["tokens"], batch["segment_ids"], batch["positions"])
        out = next_token_loss(logits, batch["tokens"], batch["segment_ids"], batch["loss_mask"], z_loss)
        tokens = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)  # processed, for throughput; count = trained
        sums = {"loss_sum": out["nll_sum"], "z_loss_sum": out["z_sum"], "count": out["count"], "tokens": tokens}
        return out["nll_sum"] + out["z_sum"], sums

    return objective


def _flat_pairs(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    # [B, 2, T] -> [2B, T]: merging the leading dims keeps each device's rows on that device.
    b, _, t = batch["tokens"].shape
    return tuple(batch[k].reshape(2 * b, t) for k in ("tokens", "segment_ids", "positions", "loss_mask"))


def pair_rewards(graphdef: nnx.GraphDef, params, batch: dict) -> jax.Array:
    """Returns the scalar head's reward at each completion's last real token, [B, 2] f32."""
    tokens, seg, pos, _ = _flat_pairs(batch)
    model = bind(graphdef, params)
    hidden, _ = model.hidden(tokens, pos, causal_segment_mask(seg))
    scores = model.scores(hidden)  # [2B, T]
    last = jnp.maximum(jnp.sum(seg > 0, axis=-1) - 1, 0)  # right padding: the last real token
    return jnp.take_along_axis(scores, last[:, None], axis=-1)[:, 0].reshape(-1, 2)


def reward_model(graphdef: nnx.GraphDef, center_coef: float) -> Objective:
    """Returns the Bradley-Terry objective of a scalar-head reward model on pairs."""

    def objective(params, batch, ref_params=None):
        r = pair_rewards(graphdef, params, batch)
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
    targets = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    logp, _ = token_logprobs(logits, targets)
    total, count = sequence_logps(logp, next_token_weights(seg, mask))
    return total.reshape(-1, 2), count.reshape(-1, 2)


def preference(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns the DPO-family objective (`dpo.kind`); sigmoid/ipo/hinge compare with `ref_params`."""
    d = cfg.dpo

    def objective(params, batch, ref_params=None):
        logps, counts = completion_logps(graphdef, params, batch)
        ref = None
        if ref_params is not None:
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


def policy_gradient(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns GRPO's objective on rollouts: clipped policy loss + kl_coef · KL to the reference.

    Rollout rows ([R, S], left-padded prompt then completion) carry `advantages` [R] and loss_mask
    1 on the completion. Losses are token-level sums (every completion token weighs the same, as
    in DAPO / Dr. GRPO), so long and short completions do not get different per-token weights.
    One update per rollout batch: the old policy is the current one, so the ratio is 1 in value
    and the clip only matters for its gradient's bookkeeping (clipfrac reports 0).
    """
    r = cfg.rl

    def logprobs(p, batch):
        logits = bind(graphdef, p)(batch["tokens"], batch["segment_ids"], batch["positions"])
        targets = jnp.pad(batch["tokens"][:, 1:], ((0, 0), (0, 1)))
        return token_logprobs(logits, targets)[0], logits

    def objective(params, batch, ref_params=None):
        w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
        logp, logits = logprobs(params, batch)
        adv = batch["advantages"][:, None] * w
        pg_sum, count, clip_sum = rl.ppo_policy_loss(logp, jax.lax.stop_gradient(logp), adv, w, r.clip_eps)
        kl_sum = jnp.float32(0.0)
        if ref_params is not None:
            ref_logp = jax.lax.stop_gradient(logprobs(ref_params, batch)[0])
            kl_sum = jnp.sum(rl.kl_penalty(logp, ref_logp, r.kl_estimator) * w)
        sums = {
            "loss_sum": pg_sum + r.kl_coef * kl_sum,
            "policy_loss_sum": pg_sum,
            "kl_sum": kl_sum,
            "entropy_sum": jnp.sum(jax.lax.stop_gradient(rl.entropy_from_logits(logits)) * w),
            "clipfrac_sum": clip_sum,
            "count": count,
            "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
        }
        return sums["loss_sum"], sums

    return objective


def needs_reference(cfg: Config) -> bool:
    """Returns whether the task compares against a frozen reference model."""
    return (cfg.task == "dpo" and cfg.dpo.kind in ("sigmoid", "ipo", "hinge")) or (cfg.task == "grpo" and cfg.rl.kl_coef > 0)


def for_task(graphdef: nnx.GraphDef, cfg: Config) -> Objective:
    """Returns the objective of `cfg.task`."""
    if cfg.task in ("pretrain", "sft"):
        return language_model(graphdef, cfg.train.z_loss)
    if cfg.task == "rm":
        return reward_model(graphdef, cfg.rm.center_coef)
    if cfg.task == "dpo":
        return preference(graphdef, cfg)
    if cfg.task == "grpo":
        return policy_gradient(graphdef, cfg)
    raise ValueError(f"task {cfg.task!r} has no gradient objective here")


def report(sums: dict) -> dict:
    """Returns the logged metrics of `sums`: each `x_sum` as x = sum / count, the rest as they are."""
    count = jnp.maximum(sums["count"], 1.0)
    return {(k[:-4] if k.endswith("_sum") else k): (v / count if k.endswith("_sum") else v) for k, v in sums.items()}
