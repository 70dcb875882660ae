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
from maxlm.tasks.task import with_router_losses


def _policy_forward(graphdef: nnx.GraphDef, params, batch: dict, values: bool, temperature: float
                    ) -> tuple[jax.Array, jax.Array, jax.Array | None, dict]:
    """Returns (log p of each next token [R, S] under softmax(logits / temperature), those logits [R, S, V],
    value-head outputs [R, S] or None, an MoE's router statistics over the rows' tokens ({} when dense)).

    The rollouts were drawn from softmax(logits / rl.temperature) (then the sampler's top-k / top-p
    filter, which this full softmax leaves out: rl.tis_cap weighs that gap), so the ratios, KL and
    entropy are of that policy, as in TRL and verl. A row whose `policy_on` is 0 (ppo's value
    warm-up) reads its values off a stop-gradient trunk: its value loss trains the head alone.
    """
    model = bind(graphdef, params)
    seg = batch["segment_ids"]
    hidden, _, router = model.forward(batch["tokens"], batch["positions"], causal_segment_mask(seg), valid_BxT=seg > 0,
                                      dropout_key=batch.get("dropout_key"))
    logits = model.logits(hidden) / temperature
    if values and "policy_on" in batch:
        hidden = jnp.where(batch["policy_on"][:, None, None] > 0, hidden, jax.lax.stop_gradient(hidden))
    return token_logprobs(logits, next_targets(batch["tokens"]))[0], logits, model.scores(hidden) if values else None, router


def rollout_scores(graphdef: nnx.GraphDef, value_head: bool, params, batch: dict, ref_params=None, *, temperature: float) -> dict:
    """Returns what the behaviour policy (and the reference) say of a rollout batch, per next-token position:
    `old_logp` [R, S], `ref_logp` [R, S] (with ref_params) and, with a value head, its `old_values` [R, S];
    log-probs at the sampling temperature."""
    logp, _, values, _ = _policy_forward(graphdef, params, batch, value_head, temperature)
    out = {"old_logp": logp}
    if values is not None:
        out["old_values"] = values
    if ref_params is not None:
        out["ref_logp"] = _policy_forward(graphdef, ref_params, batch, False, temperature)[0]
    return jax.lax.stop_gradient(out)


def policy_gradient(graphdef: nnx.GraphDef, cfg: Config, value_head: bool) -> Objective:
    """Returns the PPO / GRPO objective on prepared rollout rows (see step.rollout_step).

    Rows ([R, S], left-padded prompt then completion) carry, per next-token position, the
    behaviour policy's `old_logp`, the sampler's `sample_logp` and the `advantages`; ppo
    (value_head) adds `old_values` and `returns` and adds vf_coef x the clipped value loss; with
    rl.kl_in "loss" and a reference, kl_coef x KL(policy || ref) from `ref_logp` joins the loss
    (grpo's default; ppo's puts it in the rewards). The policy and KL terms weigh each token by
    the rows' `loss_weights` (rl.loss_agg over the whole minibatch, see step.weigh_tokens;
    token_mean: every completion token the same, as in DAPO and OpenRLHF); the value loss and the
    logged entropy, clipfrac and approx_kl are token means. The ratio is per token or GSPO's per
    sequence (rl.importance_ratio), clipped to [1 - rl.clip_eps_low, 1 + rl.clip_eps_high].
    rl.tis_cap > 0 weighs each token's policy term by min(exp(old_logp - sample_logp), cap), a
    constant. Optional `policy_on` [R] (ppo's value warm-up): 0 drops a row's policy and KL terms.
    """
    r = cfg.rl

    def objective(params, batch, ref_params=None):
        w = next_token_weights(batch["segment_ids"], batch["loss_mask"])
        logp, logits, values, router = _policy_forward(graphdef, params, batch, value_head, r.temperature)
        agg = batch["loss_weights"]
        sg = jax.lax.stop_gradient
        adv = batch["advantages"]
        if "policy_on" in batch:
            adv = adv * batch["policy_on"][:, None]
        if r.tis_cap > 0:
            # A weight > 0 factors out of the clipped max: weighing the advantage weighs the token's whole policy term.
            adv = adv * sg(rl.tis_weights(batch["old_logp"], batch["sample_logp"], r.tis_cap))
        pg_sum, count, clip_sum = rl.ppo_policy_loss(
            logp, batch["old_logp"], adv, w, r.clip_eps_low, r.clip_eps_high, r.importance_ratio, agg
        )
        sums = {
            "policy_loss_sum": pg_sum,
            "entropy_sum": jnp.sum(sg(rl.entropy_from_logits(logits)) * w),
            "clipfrac_sum": clip_sum,
            # How far the updates moved the policy from the one that sampled (k3, >= 0).
            "approx_kl_sum": jnp.sum(sg(rl.kl_penalty(logp, batch["old_logp"], "k3")) * w),
            # |ratio - 1|: exactly 0 on a rollout batch's first update, when the sampling policy is the one trained.
            "ratio_dev_sum": jnp.sum(sg(jnp.abs(jnp.exp(logp - batch["old_logp"]) - 1.0)) * w),
            "count": count,
            "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),
        }
        loss = pg_sum
        if value_head:
            vf_sum, _, vclip_sum = rl.ppo_value_loss(values, batch["old_values"], batch["returns"], w, r.value_clip_eps)
            loss = loss + r.vf_coef * vf_sum
            sums |= {"value_loss_sum": vf_sum, "value_clipfrac_sum": vclip_sum}
        if r.kl_in == "loss" and "ref_logp" in batch:
            kl_w = agg * batch["policy_on"][:, None] if "policy_on" in batch else agg
            kl_sum = jnp.sum(rl.kl_penalty(logp, batch["ref_logp"], r.kl_estimator) * kl_w)
            loss = loss + r.kl_coef * kl_sum
        sums["loss_sum"] = loss
        return with_router_losses(loss, sums, router, cfg.model.router_aux_coef, cfg.model.router_z_coef)

    return objective
