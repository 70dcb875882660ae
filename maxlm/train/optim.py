"""AdamW with warmup + cosine / WSD / constant schedule, global-norm clipping and a decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

from maxlm.config import TrainConfig


def schedule(cfg: TrainConfig) -> optax.Schedule:
    """Returns the learning rate as a function of the step."""
    peak, warm, steps = cfg.learning_rate, cfg.warmup_steps, max(cfg.steps, 1)
    floor = peak * cfg.min_lr_ratio
    warmup = optax.linear_schedule(0.0, peak, max(warm, 1))
    if cfg.schedule == "constant":
        return optax.join_schedules([warmup, optax.constant_schedule(peak)], [warm])
    if cfg.schedule == "cosine":
        return optax.join_schedules([warmup, optax.cosine_decay_schedule(peak, max(steps - warm, 1), alpha=cfg.min_lr_ratio)], [warm])
    # wsd: warmup, hold at the peak, then decay linearly over the last `decay_fraction` of steps.
    decay = max(int(steps * cfg.decay_fraction), 1)
    hold = max(steps - warm - decay, 0)
    return optax.join_schedules(
        [warmup, optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [warm, warm + hold]
    )


def decay_mask(params: Any) -> Any:
    """Returns a bool tree: True for weight matrices, False for norm scales and biases."""
    def keep(path, _):
        names = [str(getattr(p, "key", p)) for p in path]
        return not any("norm" in n or n.endswith("bias") for n in names)

    return jax.tree_util.tree_map_with_path(keep, params)


def optimizer(cfg: TrainConfig, updates_per_step: int = 1) -> optax.GradientTransformation:
    """Returns clip-by-global-norm followed by AdamW on the schedule.

    `updates_per_step` > 1 (ppo/grpo: epochs x minibatches per rollout batch) keeps the schedule
    in train steps: warmup_steps and steps count rollout batches, not optimizer updates.
    """
    lr = schedule(cfg)
    if updates_per_step > 1:
        lr = lambda count, base=lr: base(count // updates_per_step)
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
