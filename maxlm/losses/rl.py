"""Pure math of PPO and GRPO on arrays: KL estimates, per-token rewards, GAE, whitening, the
clipped policy and value losses, entropy, group-relative advantages, KL-coefficient control.

Letters: B batch (one row per sampled response), T response length, V vocab, G group size.
Responses differ in length, so every per-token function takes mask_BxT (1 on response tokens).
Losses return sums and counts, never means (see losses/logprobs.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "k3", "abs", "mse")


def kl_penalty(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, kind: str = "k1") -> jax.Array:
    """Returns per-token estimates [B, T] f32 of KL(policy ‖ ref) from the sampled tokens' log-probs.

    With r = ref_logp - logp (Schulman, "Approximating KL divergence", 2020):
      k1  -r                unbiased, can be negative
      k3  exp(r) - 1 - r    unbiased and >= 0 (TRL's GRPO penalty)
      abs |r|
      mse r² / 2
    Unmasked: multiply by mask_BxT before summing.
    """
    r_BxT = ref_logp_BxT.astype(jnp.float32) - logp_BxT.astype(jnp.float32)
    if kind == "k1":
        return -r_BxT
    if kind == "k3":
        # expm1, not exp - 1: near r = 0 (policy ≈ ref, the usual case) exp(r) - 1 cancels in f32.
        return jnp.expm1(r_BxT) - r_BxT
    if kind == "abs":
        return jnp.abs(r_BxT)
    if kind == "mse":
        return 0.5 * jnp.square(r_BxT)
    raise ValueError(f"unknown KL estimator {kind!r}; valid kinds: {', '.join(KL_KINDS)}")


def last_token_onehot(mask_BxT: jax.Array) -> jax.Array:
    """Returns [B, T] f32: 1 at the last position where mask_BxT is 1, all zeros for an empty row."""
    m_BxT = mask_BxT.astype(jnp.float32)
    T = m_BxT.shape[-1]
    last_B = T - 1 - jnp.argmax(m_BxT[:, ::-1], axis=-1)
    return jax.nn.one_hot(last_B, T, dtype=jnp.float32) * jnp.max(m_BxT, axis=-1, keepdims=True)


def token_rewards(score_B: jax.Array, kl_BxT: jax.Array, mask_BxT: jax.Array, kl_coef) -> jax.Array:
    """Returns per-token PPO rewards [B, T] f32: -kl_coef·kl on every response token, plus score_B
    (the reward model's or verifier's scalar) on the last response token; 0 off the mask.

    A row with an empty mask gets no reward at all (its score has no token to sit on).
    """
    m_BxT = mask_BxT.astype(jnp.float32)
    per_token_BxT = -kl_coef * kl_BxT.astype(jnp.float32) * m_BxT
    return per_token_BxT + score_B.astype(jnp.float32)[:, None] * last_token_onehot(m_BxT)


def gae(rewards_BxT, values_BxT, mask_BxT, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """Returns (advantages [B, T] f32, returns [B, T] f32) by generalized advantage estimation.

    δ_t = r_t + γ·m_{t+1}·V_{t+1} - V_t and A_t = δ_t + γλ·m_{t+1}·A_{t+1}, scanned backwards.
    A position whose successor is off the mask ends the episode there: nothing is bootstrapped from
    values past the end (they may be garbage from the value head on padding). returns = A + V.
    Both outputs are 0 where mask_BxT is 0. Whitening is separate (`whiten`).
    """
    m_TxB = mask_BxT.astype(jnp.float32).T
    r_TxB = rewards_BxT.astype(jnp.float32).T * m_TxB
    v_TxB = values_BxT.astype(jnp.float32).T * m_TxB
    # Successor's value and mask, 0 past the last column: the response ends there.
    next_v_TxB = jnp.concatenate([v_TxB[1:], jnp.zeros_like(v_TxB[:1])])
    next_m_TxB = jnp.concatenate([m_TxB[1:], jnp.zeros_like(m_TxB[:1])])
    delta_TxB = (r_TxB + gamma * next_v_TxB - v_TxB) * m_TxB

    def step(next_adv_B, xs):
        delta_B, next_m_B, m_B = xs
        adv_B = (delta_B + gamma * lam * next_m_B * next_adv_B) * m_B
        return adv_B, adv_B

    _, adv_TxB = jax.lax.scan(step, jnp.zeros_like(delta_TxB[0]), (delta_TxB, next_m_TxB, m_TxB), reverse=True)
    return adv_TxB.T, (adv_TxB + v_TxB).T


def whiten(x_BxT: jax.Array, mask_BxT: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """Returns x_BxT [B, T] f32 scaled to unit variance over the masked entries; 0 off the mask.

    Mean and unbiased variance (Bessel: n/(n-1)) are over all masked entries of the batch, as in
    TRL's masked_whiten; shift_mean=False adds the mean back (used for rewards, not advantages).
    """
    m_BxT = mask_BxT.astype(jnp.float32)
    x_BxT = x_BxT.astype(jnp.float32)
    n = jnp.sum(m_BxT)
    mean = jnp.sum(x_BxT * m_BxT) / jnp.maximum(n, 1.0)
    var = jnp.sum(jnp.square(x_BxT - mean) * m_BxT) / jnp.maximum(n - 1.0, 1.0)
    out_BxT = (x_BxT - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out_BxT = out_BxT + mean
    return out_BxT * m_BxT


def ppo_policy_loss(
    logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, clip_eps: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (loss_sum, count, clipfrac_sum), scalars f32, of PPO's clipped surrogate.

    Per token: max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)) with ρ = exp(logp - old_logp); clipfrac counts the
    tokens where the clipped term is the larger (the gradient is cut). Divide both sums by count.
    """
    m_BxT = mask_BxT.astype(jnp.float32)
    adv_BxT = advantages_BxT.astype(jnp.float32)
    ratio_BxT = jnp.exp(logp_BxT.astype(jnp.float32) - old_logp_BxT.astype(jnp.float32))
    unclipped_BxT = -adv_BxT * ratio_BxT
    clipped_BxT = -adv_BxT * jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps)
    loss_BxT = jnp.maximum(unclipped_BxT, clipped_BxT)
    clipped_frac_BxT = (clipped_BxT > unclipped_BxT).astype(jnp.float32)
    return jnp.sum(loss_BxT * m_BxT), jnp.sum(m_BxT), jnp.sum(clipped_frac_BxT * m_BxT)


def tis_weights(old_logp_BxT: jax.Array, sample_logp_BxT: jax.Array, cap: float) -> jax.Array:
    """Returns truncated importance weights [B, T] f32: min(exp(old_logp - sample_logp), cap), the training
    forward's probability of each sampled token over the sampler's, capped (Yao et al. 2025's TIS).

    Unmasked. Taken in log space: a huge ratio (a token the sampler's filter favoured far beyond
    the full softmax) never overflows.
    """
    log_ratio_BxT = old_logp_BxT.astype(jnp.float32) - sample_logp_BxT.astype(jnp.float32)
    return jnp.exp(jnp.minimum(log_ratio_BxT, jnp.log(jnp.float32(cap))))


def ppo_value_loss(
    values_BxT, old_values_BxT, returns_BxT, mask_BxT, clip_eps_value: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (loss_sum, count, clipfrac_sum), scalars f32, of PPO's clipped value loss.

    Per token: 0.5·max((V - R)², (V_clip - R)²) with V_clip = old_V + clip(V - old_V, ±ε_v).
    """
    m_BxT = mask_BxT.astype(jnp.float32)
    v_BxT = values_BxT.astype(jnp.float32)
    old_v_BxT = old_values_BxT.astype(jnp.float32)
    ret_BxT = returns_BxT.astype(jnp.float32)
    v_clip_BxT = old_v_BxT + jnp.clip(v_BxT - old_v_BxT, -clip_eps_value, clip_eps_value)
    unclipped_BxT = jnp.square(v_BxT - ret_BxT)
    clipped_BxT = jnp.square(v_clip_BxT - ret_BxT)
    loss_BxT = 0.5 * jnp.maximum(unclipped_BxT, clipped_BxT)
    clipped_frac_BxT = (clipped_BxT > unclipped_BxT).astype(jnp.float32)
    return jnp.sum(loss_BxT * m_BxT), jnp.sum(m_BxT), jnp.sum(clipped_frac_BxT * m_BxT)


def entropy_from_logits(logits_BxTxV: jax.Array) -> jax.Array:
    """Returns the per-token entropy [B, T] f32 of softmax(logits): log Z - Σ p·logit."""
    # f32 here: in bf16 the p·logit sum over a large vocab loses most of its digits.
    logits = logits_BxTxV.astype(jnp.float32)
    log_z_BxT = jax.nn.logsumexp(logits, axis=-1)
    p_BxTxV = jax.nn.softmax(logits, axis=-1)
    return log_z_BxT - jnp.sum(p_BxTxV * logits, axis=-1)


def group_advantages(rewards_B: jax.Array, group_size: int, eps: float = 1e-6, scale: bool = True) -> jax.Array:
    """Returns GRPO's group-relative advantages [B] f32: (r - mean_group) / (std_group + eps).

    Rows are grouped consecutively: rows [g·G, (g+1)·G) are the G completions of prompt g (TRL's
    repeat_interleave order). std is the UNBIASED (n-1) sample std, as TRL's GRPO (nanstd with
    Bessel's correction, TRL 1.16) computes it; DeepSeekMath (Shao et al. 2024) just says "std".
    TRL adds eps = 1e-4: pass eps=1e-4 to match it. scale=False returns r - mean_group (Dr. GRPO,
    TRL's scale_rewards="none"). A group of size 1, or of equal rewards, gets advantage 0.
    """
    B = rewards_B.shape[0]
    if group_size < 1 or B % group_size:
        raise ValueError(f"batch of {B} rewards does not split into groups of {group_size}")
    r_NxG = rewards_B.astype(jnp.float32).reshape(B // group_size, group_size)
    centered_NxG = r_NxG - jnp.mean(r_NxG, axis=-1, keepdims=True)
    if scale:
        # max(G - 1, 1): a group of one has std 0 (TRL's nanstd gives nan there, then zeroes it).
        std_Nx1 = jnp.sqrt(jnp.sum(jnp.square(centered_NxG), axis=-1, keepdims=True) / max(group_size - 1, 1))
        centered_NxG = centered_NxG / (std_Nx1 + eps)
    return centered_NxG.reshape(B)


@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
    """Ziegler et al. 2019's KL coefficient: grows when the measured KL overshoots the target.

    Host-side, between steps: `ctl = dataclasses.replace(ctl, coef=ctl.update(kl, n_steps))`.
    """

    coef: float
    target: float
    horizon: float

    def update(self, current_kl: float, n_steps: int) -> float:
        """Returns the new coefficient: coef·(1 + clip(kl/target - 1, ±0.2)·n_steps/horizon)."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        return self.coef * (1.0 + error * n_steps / self.horizon)


@dataclasses.dataclass(frozen=True)
class FixedKLController:
    """A KL coefficient that never changes; same interface as AdaptiveKLController."""

    coef: float

    def update(self, current_kl: float, n_steps: int) -> float:
        """Returns the unchanged coefficient."""
        del current_kl, n_steps
        return self.coef
