"""Preference (DPO family) and reward-model losses on arrays: per pair [B]; the caller sums them and counts pairs.

Letters: B batch (pairs), T length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

PREFERENCE_KINDS = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
REFERENCE_KINDS = ("sigmoid", "ipo", "hinge")
_LENGTH_NORMALIZED = ("ipo", "simpo", "orpo")


class PreferenceLoss(NamedTuple):
    """Per-pair losses and implicit rewards, all [B] f32; the rewards carry no gradient."""

    loss_B: jax.Array
    chosen_rewards_B: jax.Array
    rejected_rewards_B: jax.Array


def _log1mexp(x: jax.Array) -> jax.Array:
    """Returns log(1 - exp(x)) for x < 0, stable at both ends (Mächler 2012: branch at -ln 2)."""
    cut = -0.6931471805599453
    # Each branch sees only inputs where it is finite: jnp.where still differentiates the other branch,
    # and log1p(-exp(0)) = -inf there would turn the gradient into nan.
    lo = jnp.where(x < cut, x, cut)
    hi = jnp.where(x < cut, cut, x)
    return jnp.where(x < cut, jnp.log1p(-jnp.exp(lo)), jnp.log(-jnp.expm1(hi)))


def _smoothed_sigmoid_loss(logits_B: jax.Array, label_smoothing: float) -> jax.Array:
    """Returns -(1-ε)·log σ(z) - ε·log σ(-z) [B]: the conservative (cDPO) form; ε = 0 gives plain -log σ(z)."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits_B) - label_smoothing * jax.nn.log_sigmoid(-logits_B)


def preference_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps=None,
    ref_rejected_logps=None,
    *,
    kind: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
    chosen_count=None,
    rejected_count=None,
    chosen_nll=None,
) -> PreferenceLoss:
    """Returns PreferenceLoss(loss_B, chosen_rewards_B, rejected_rewards_B), each [B] f32, for one kind.

    Inputs are [B] f32: the policy's (and for sigmoid/ipo/hinge the reference's) log-probs of each
    completion SUMMED over its tokens, i.e. the first output of `sequence_logps`. The length-normalized
    kinds (ipo, simpo, orpo) also need `chosen_count`/`rejected_count` [B] (the second output of
    `sequence_logps`) and divide by them themselves, as TRL does; pass ones to use unnormalized sums.
    With z = (logp_c - ref_c) - (logp_r - ref_r) and ε = label_smoothing:
      sigmoid  DPO: -log σ(β·z); ε > 0 gives cDPO, -(1-ε)·log σ(β·z) - ε·log σ(-β·z).
      ipo      (z̄ - 1/(2β))², z̄ the same difference of PER-TOKEN-AVERAGED log-ratios (TRL's IPO).
      hinge    relu(1 - β·z).
      simpo    reference-free: the cDPO form of β·(avg_c - avg_r) - γ, avg = sum / count.
      orpo     reference-free: -β·log σ(log_odds_c - log_odds_r), log_odds = avg - log(1 - exp(avg));
               β plays ORPO's λ, as in TRL. ORPO's NLL term on the chosen completion is NOT included:
               add it yourself (e.g. the next-token loss on the chosen rows) or pass it as `chosen_nll`.
    `chosen_nll` [B], if given, is added to every kind's per-pair loss as is.
    Rewards: β·(logp - ref) (summed) for sigmoid/ipo/hinge; β·avg logp for simpo/orpo (TRL's logging).
    """
    if kind not in PREFERENCE_KINDS:
        raise ValueError(f"unknown preference loss kind {kind!r}; valid kinds: {', '.join(PREFERENCE_KINDS)}")
    has_ref = ref_chosen_logps is not None and ref_rejected_logps is not None
    if kind in REFERENCE_KINDS and not has_ref:
        raise ValueError(f"preference loss {kind!r} needs ref_chosen_logps and ref_rejected_logps (reference-model log-probs)")
    if kind not in REFERENCE_KINDS and (ref_chosen_logps is not None or ref_rejected_logps is not None):
        raise ValueError(f"preference loss {kind!r} is reference-free; do not pass reference log-probs")
    if kind in _LENGTH_NORMALIZED and (chosen_count is None or rejected_count is None):
        raise ValueError(f"preference loss {kind!r} is length-normalized: pass chosen_count and rejected_count (token counts)")
    if label_smoothing and kind not in ("sigmoid", "simpo"):
        raise ValueError(f"label_smoothing applies to 'sigmoid' (cDPO) and 'simpo' only, not {kind!r}")

    c_B = jnp.asarray(chosen_logps, jnp.float32)
    r_B = jnp.asarray(rejected_logps, jnp.float32)
    if kind in _LENGTH_NORMALIZED:
        # clamp: an empty completion (count 0) must not divide by zero; TRL clamps the same way.
        n_c_B = jnp.maximum(jnp.asarray(chosen_count, jnp.float32), 1.0)
        n_r_B = jnp.maximum(jnp.asarray(rejected_count, jnp.float32), 1.0)
    if has_ref:
        ratio_c_B = c_B - jnp.asarray(ref_chosen_logps, jnp.float32)
        ratio_r_B = r_B - jnp.asarray(ref_rejected_logps, jnp.float32)
        chosen_rewards_B, rejected_rewards_B = beta * ratio_c_B, beta * ratio_r_B

    if kind == "sigmoid":
        loss_B = _smoothed_sigmoid_loss(beta * (ratio_c_B - ratio_r_B), label_smoothing)
    elif kind == "hinge":
        loss_B = jax.nn.relu(1.0 - beta * (ratio_c_B - ratio_r_B))
    elif kind == "ipo":
        loss_B = jnp.square(ratio_c_B / n_c_B - ratio_r_B / n_r_B - 1.0 / (2.0 * beta))
    else:
        avg_c_B, avg_r_B = c_B / n_c_B, r_B / n_r_B
        chosen_rewards_B, rejected_rewards_B = beta * avg_c_B, beta * avg_r_B
        if kind == "simpo":
            loss_B = _smoothed_sigmoid_loss(beta * (avg_c_B - avg_r_B) - gamma, label_smoothing)
        else:  # orpo
            # An average log-prob of exactly 0 (p = 1) makes log(1 - p) = -inf; cap just below 0.
            avg_c_B, avg_r_B = jnp.minimum(avg_c_B, -1e-6), jnp.minimum(avg_r_B, -1e-6)
            log_odds_B = (avg_c_B - avg_r_B) - (_log1mexp(avg_c_B) - _log1mexp(avg_r_B))
            loss_B = -beta * jax.nn.log_sigmoid(log_odds_B)

    if chosen_nll is not None:
        loss_B = loss_B + jnp.asarray(chosen_nll, jnp.float32)
    return PreferenceLoss(loss_B, jax.lax.stop_gradient(chosen_rewards_B), jax.lax.stop_gradient(rejected_rewards_B))


def reward_loss(chosen_rewards, rejected_rewards, margin=None, center_coef: float = 0.0) -> jax.Array:
    """Returns the Bradley-Terry reward-model loss per pair [B] f32.

    chosen_rewards, rejected_rewards, margin: [B] scalar rewards (margin optional, per pair).
    loss_B = -log σ(r_c - r_r - margin) + center_coef·(r_c + r_r)²; the second term pulls rewards
    toward zero mean (Eisenstein et al. 2023, TRL's center_rewards_coefficient).
    """
    rc_B = jnp.asarray(chosen_rewards, jnp.float32)
    rr_B = jnp.asarray(rejected_rewards, jnp.float32)
    diff_B = rc_B - rr_B
    if margin is not None:
        diff_B = diff_B - jnp.asarray(margin, jnp.float32)
    # log_sigmoid, not log(sigmoid): the latter is -inf (and its gradient nan) once diff < -90 in f32.
    return -jax.nn.log_sigmoid(diff_B) + center_coef * jnp.square(rc_B + rr_B)


def pool_scores(scores_BxT: jax.Array, seg_BxT: jax.Array, mask_BxT: jax.Array, pooling: str) -> jax.Array:
    """Returns one reward per right-padded row [B] f32: the head at the last real token, or its mean where mask_BxT is 1."""
    if pooling == "mean":
        w = mask_BxT.astype(jnp.float32) * (seg_BxT > 0)
        return jnp.sum(scores_BxT * w, axis=-1) / jnp.maximum(jnp.sum(w, axis=-1), 1.0)
    last = jnp.maximum(jnp.sum(seg_BxT > 0, axis=-1) - 1, 0)
    return jnp.take_along_axis(scores_BxT, last[:, None], axis=-1)[:, 0]
