"""Pure math of PPO and GRPO on arrays: KL estimates, per-token rewards, GAE, whitening, the
clipped policy and value losses, importance ratios (per token or GSPO's per sequence), entropy,
group-relative advantages (GRPO, RLOO, REINFORCE++-baseline), DAPO's overlong shaping, the
per-token weights of each loss aggregation, KL-coefficient control.

Letters: B batch (one row per sampled response), T response length, V vocab, G group size.
Responses differ in length, so every per-token function takes mask_BxT (1 on response tokens).
Losses return sums and counts, never means (see losses/logprobs.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "k3", "abs", "mse")
ADVANTAGE_KINDS = ("group", "rloo", "reinforce_pp")
REWARD_SCALES = ("group", "batch", "none")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "constant")
IMPORTANCE_RATIOS = ("token", "sequence")


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


def importance_ratio(logp_BxT, old_logp_BxT, mask_BxT, kind: str = "token") -> jax.Array:
    """Returns the importance ratio [B, T] f32 of the policy to the one that sampled, per token.

    token: ρ_t = exp(logp_t - old_logp_t) (PPO, GRPO). sequence: GSPO (Zheng et al. 2025), the
    length-normalized sequence ratio s = exp(mean over the completion's tokens of logp - old_logp)
    in the stop-gradient form sg(s)·exp(logp_t - sg(logp_t)): its value is s on every token of the
    row and its gradient s·∇logp_t, so a sequence-mean of the per-token surrogate is GSPO's objective.
    """
    logp_BxT = logp_BxT.astype(jnp.float32)
    log_ratio_BxT = logp_BxT - old_logp_BxT.astype(jnp.float32)
    if kind == "token":
        return jnp.exp(log_ratio_BxT)
    if kind == "sequence":
        m_BxT = mask_BxT.astype(jnp.float32)
        mean_log_ratio_B = jnp.sum(log_ratio_BxT * m_BxT, axis=-1) / jnp.maximum(jnp.sum(m_BxT, axis=-1), 1.0)
        s_B = jax.lax.stop_gradient(jnp.exp(mean_log_ratio_B))
        return s_B[:, None] * jnp.exp(logp_BxT - jax.lax.stop_gradient(logp_BxT))
    raise ValueError(f"unknown importance ratio {kind!r}; valid: {', '.join(IMPORTANCE_RATIOS)}")


def clipped_surrogate(ratio_BxT, advantages_BxT, clip_eps_low: float, clip_eps_high: float) -> tuple[jax.Array, jax.Array]:
    """Returns (per-token loss [B, T] f32, 1 where the clipped term is the larger [B, T] f32) of PPO's surrogate.

    Per token: max(-A·ρ, -A·clip(ρ, 1-ε_low, 1+ε_high)); ε_low = ε_high is PPO, a larger ε_high is
    DAPO's clip-higher (Yu et al. 2025). Unmasked.
    """
    adv_BxT = advantages_BxT.astype(jnp.float32)
    unclipped_BxT = -adv_BxT * ratio_BxT
    clipped_BxT = -adv_BxT * jnp.clip(ratio_BxT, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    return jnp.maximum(unclipped_BxT, clipped_BxT), (clipped_BxT > unclipped_BxT).astype(jnp.float32)


def ppo_policy_loss(
    logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, clip_eps_low: float, clip_eps_high: float | None = None,
    ratio: str = "token", weights_BxT=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (loss_sum, count, clipfrac_sum), scalars f32, of PPO's clipped surrogate.

    loss_sum weighs each token's surrogate (`clipped_surrogate`, with `importance_ratio` `ratio`)
    by weights_BxT (default mask_BxT: a plain token sum; see `aggregation_weights`); count and
    clipfrac_sum (tokens where the gradient is cut) are over mask_BxT. Divide both sums by count.
    clip_eps_high defaults to clip_eps_low (symmetric clipping).
    """
    m_BxT = mask_BxT.astype(jnp.float32)
    w_BxT = m_BxT if weights_BxT is None else weights_BxT.astype(jnp.float32)
    high = clip_eps_low if clip_eps_high is None else clip_eps_high
    ratio_BxT = importance_ratio(logp_BxT, old_logp_BxT, m_BxT, ratio)
    loss_BxT, clipped_frac_BxT = clipped_surrogate(ratio_BxT, advantages_BxT, clip_eps_low, high)
    return jnp.sum(loss_BxT * w_BxT), jnp.sum(m_BxT), jnp.sum(clipped_frac_BxT * m_BxT)


def aggregation_weights(mask_BxT: jax.Array, kind: str, max_len: int) -> jax.Array:
    """Returns per-token weights [B, T] f32 such that sum(weights·x) / sum(mask) is `kind`'s mean of x over the batch.

    token_mean: the mask itself (every completion token weighs the same: DAPO, Yu et al. 2025);
    sequence_mean: each completion's token mean, then the mean over completions (GRPO as Shao
    et al. 2024 write it); constant: sum / (completions x max_len) (Dr. GRPO's constant
    normalizer, Liu et al. 2025). A completion is a row with any mask; rows without are padding.
    Computed on the whole minibatch: train_step divides the accumulated sums by the token count,
    so the microbatches of gradient accumulation then add up to the minibatch's exact mean.
    """
    m_BxT = mask_BxT.astype(jnp.float32)
    if kind == "token_mean":
        return m_BxT
    lengths_B = jnp.sum(m_BxT, axis=-1)
    tokens = jnp.sum(lengths_B)
    completions = jnp.maximum(jnp.sum((lengths_B > 0).astype(jnp.float32)), 1.0)
    if kind == "sequence_mean":
        per_row_B = tokens / (completions * jnp.maximum(lengths_B, 1.0))
    elif kind == "constant":
        per_row_B = jnp.full_like(lengths_B, tokens / (completions * max_len))
    else:
        raise ValueError(f"unknown loss aggregation {kind!r}; valid: {', '.join(LOSS_AGGREGATIONS)}")
    return m_BxT * per_row_B[:, None]


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


def group_advantages(
    rewards_B: jax.Array, group_size: int, kind: str = "group", scale: str = "group", eps: float = 1e-6, valid_B=None
) -> jax.Array:
    """Returns the advantages [B] f32 of one reward per completion, against its group of G.

    Rows are grouped consecutively: rows [g·G, (g+1)·G) are the G completions of prompt g (TRL's
    repeat_interleave order). The baseline (`kind`):
      group         r - mean_group (GRPO, Shao et al. 2024)
      rloo          r_i - mean_{j != i} r_j, the leave-one-out mean (RLOO, Ahmadian et al. 2024)
      reinforce_pp  (r - mean_group) / std over the whole batch of those centred values: the
                    "REINFORCE++-baseline" form of REINFORCE++ (Hu 2025); `scale` is unused
    then for group and rloo the division by (std + eps) that `scale` picks: group, the group's
    std of the rewards; batch, the batch's std of the rewards (TRL's scale_rewards="batch");
    none, no division (Dr. GRPO, Liu et al. 2025). Every std is the UNBIASED (n-1) one, as TRL's
    (Bessel's correction, TRL 1.16) is; TRL adds eps = 1e-4. A group of equal rewards, or of one
    completion, gets advantage 0. valid_B (optional [B] 0/1, whole groups; jit-friendly): only those
    rows count in a batch std (and mean), the others get advantage 0 (DAPO's padding groups).
    """
    B = rewards_B.shape[0]
    if group_size < 1 or B % group_size:
        raise ValueError(f"batch of {B} rewards does not split into groups of {group_size}")
    r_NxG = rewards_B.astype(jnp.float32).reshape(B // group_size, group_size)
    v_NxG = None if valid_B is None else jnp.asarray(valid_B, jnp.float32).reshape(r_NxG.shape)
    centered_NxG = r_NxG - jnp.mean(r_NxG, axis=-1, keepdims=True)
    if kind == "reinforce_pp":
        # The centred values' batch mean is 0 (each group sums to 0), so eq. 10's mean shift is left out:
        # it would only add rounding noise to the exact zeros of equal-reward groups.
        return _only_valid(centered_NxG / (_unbiased_std(centered_NxG, 0.0, v_NxG) + eps), v_NxG).reshape(B)
    if kind not in ("group", "rloo"):
        raise ValueError(f"unknown advantage {kind!r}; valid: {', '.join(ADVANTAGE_KINDS)}")
    # The group std is taken before the baseline changes: it is the rewards' std either way.
    if scale == "group":
        # max(G - 1, 1): a group of one has std 0 (TRL's nanstd gives nan there, then zeroes it).
        std = jnp.sqrt(jnp.sum(jnp.square(centered_NxG), axis=-1, keepdims=True) / max(group_size - 1, 1))
    elif scale == "batch":
        mean = jnp.mean(r_NxG) if v_NxG is None else jnp.sum(r_NxG * v_NxG) / jnp.maximum(jnp.sum(v_NxG), 1.0)
        std = _unbiased_std(r_NxG, mean, v_NxG)
    elif scale != "none":
        raise ValueError(f"unknown reward scale {scale!r}; valid: {', '.join(REWARD_SCALES)}")
    if kind == "rloo":
        # mean over the others: (group sum - r_i) / (G - 1); a group of one has no others.
        others_NxG = (jnp.sum(r_NxG, axis=-1, keepdims=True) - r_NxG) / max(group_size - 1, 1)
        centered_NxG = (r_NxG - others_NxG) if group_size > 1 else jnp.zeros_like(r_NxG)
    if scale != "none":
        centered_NxG = centered_NxG / (std + eps)
    return _only_valid(centered_NxG, v_NxG).reshape(B)


def _unbiased_std(x: jax.Array, mean, valid=None) -> jax.Array:
    """Returns the unbiased std (scalar f32) of all entries of x (those where `valid` is 1) about `mean`; 0 for a single entry."""
    if valid is None:
        return jnp.sqrt(jnp.sum(jnp.square(x - mean)) / max(x.size - 1, 1))
    return jnp.sqrt(jnp.sum(jnp.square(x - mean) * valid) / jnp.maximum(jnp.sum(valid) - 1.0, 1.0))


def _only_valid(x: jax.Array, valid) -> jax.Array:
    """Returns x with the entries where `valid` is 0 set to 0 (x itself without `valid`)."""
    return x if valid is None else jnp.where(valid > 0, x, 0.0)


def overlong_penalty(lengths_B, max_len: int, buffer: int, penalty: float) -> jax.Array:
    """Returns DAPO's soft overlong punishment [B] f32 (Yu et al. 2025), to subtract from the scores.

    0 for a completion of L <= max_len - buffer tokens, then penalty·(L - (max_len - buffer)) / buffer,
    rising linearly to `penalty` at L = max_len (a truncated completion); all 0 when buffer is 0.
    """
    lengths_B = jnp.asarray(lengths_B, jnp.float32)
    if buffer <= 0:
        return jnp.zeros_like(lengths_B)
    return penalty * jnp.maximum(lengths_B - (max_len - buffer), 0.0) / buffer


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
