"""What PPO and GRPO minimize on prepared rollout rows, and what the sampling policy says of them.

Rows are [R, S]: a left-padded prompt then a completion (see rollouts.py). `value_head` is PPO:
its scalar head is a value head on the policy's trunk, trained beside the policy.
Letters: R rollout rows, S row length, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maxlm.config import Config
from maxlm.losses import rl
from maxlm.losses.logprobs import next_targets, next_token_weights, token_logprobs
from maxlm.models.llama import causal_segment_mask
from maxlm.models.params import bind
from maxlm.optim.update import Objective


def _policy_forward(graphdef: nnx.GraphDef, params, batch: dict, values: bool) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Returns (log p of each next token [R, S], logits [R, S, V], value-head outputs [R, S] or None)."""
    model = bind(graphdef, params)
    hidden, _ = model.hidden(batch["tokens"], batch["positions"], causal_segment_mask(batch["segment_ids"]))
    logits = model.logits(hidden)
    return token_logprobs(logits, next_targets(batch["tokens"]))[0], logits, model.scores(hidden) if values else None


def rollout_scores(graphdef: nnx.GraphDef, value_head: bool, params, batch: dict, ref_params=None) -> dict:
    """Returns what the behaviour policy (and the reference) say of a rollout batch, per next-token position:
    `old_logp` [R, S], `ref_logp` [R, S] (with ref_params) and, with a value head, its `old_values` [R, S]."""
    logp, _, values = _policy_forward(graphdef, params, batch, value_head)
    out = {"old_logp": logp}
    if values is not None:
        out["old_values"] = values
    if ref_params is not None:
        out["ref_logp"] = _policy_forward(graphdef, ref_params, batch, False)[0]
    return jax.lax.stop_gradient(out)


def policy_gradient(graphdef: nnx.GraphDef, cfg: Config, value_head: bool) -> Objective:
    """Returns the PPO / GRPO objective on prepared rollout rows (see step.rollout_step).

    Rows ([R, S], left-padded prompt then completion) carry, per next-token position, the
    behaviour policy's `old_logp` and the `advantages`; ppo (value_head) adds `old_values` and
    `returns` and adds vf_coef x the clipped value loss; grpo with a reference adds kl_coef x
    KL(policy || ref) from `ref_logp` to the loss (ppo has it in the rewards instead). The policy
    and KL terms weigh each token by the rows' `loss_weights` (rl.loss_agg over the whole
    minibatch, see step.weigh_tokens; token_mean: every completion token the same, as in DAPO and
    OpenRLHF); the value loss and the logged entropy, clipfrac and approx_kl are token means.
    The ratio is per token or GSPO's per sequence (rl.importance_ratio), clipped to
    [1 - rl.clip_eps_low, 1 + rl.clip_eps_high].
    """
    r = cfg.rl

    def objective(params, batch, ref_params=None):
        w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
        logp, logits, values = _policy_forward(graphdef, params, batch, value_head)
        agg = batch["loss_weights"]
        pg_sum, count, clip_sum = rl.ppo_policy_loss(
            logp, batch["old_logp"], batch["advantages"], w, r.clip_eps_low, r.clip_eps_high, r.importance_ratio, agg
        )
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
        if value_head:
            vf_sum, _, vclip_sum = rl.ppo_value_loss(values, batch["old_values"], batch["returns"], w, r.value_clip_eps)
            loss = loss + r.vf_coef * vf_sum
            sums |= {"value_loss_sum": vf_sum, "value_clipfrac_sum": vclip_sum}
        elif "ref_logp" in batch:
            kl_sum = jnp.sum(rl.kl_penalty(logp, batch["ref_logp"], r.kl_estimator) * agg)
            loss = loss + r.kl_coef * kl_sum
        sums["loss_sum"] = loss
        return loss, sums

    return objective
