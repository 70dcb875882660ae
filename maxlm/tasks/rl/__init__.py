"""RL from the policy's own samples: ppo (a value head, GAE, KL in the rewards) and grpo (group-relative advantages).

rollouts.py samples and scores the batches, step.py turns one into clipped updates with
objective.py, verifiers.py holds the named rewards. Where the KL to the reference goes
(rl.kl_in) defaults per task in the schema (`per_task`): ppo "reward", grpo "loss".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from maxlm.config import Config, RLConfig
from maxlm.data.pipeline import DataIterator
from maxlm.errors import MaxlmError
from maxlm.tasks.rl.objective import policy_gradient
from maxlm.tasks.rl.rollouts import Rollouts, make_eval_rollouts, make_rollouts, rollout_layout
from maxlm.tasks.rl.step import rollout_step
from maxlm.tasks.task import Task, TaskData


@dataclasses.dataclass
class RolloutBatches:
    """The batches of an RL task: each sampled from the current params over the next prompt indices."""

    rollouts: Rollouts
    prompts: DataIterator
    follows_params = True

    @property
    def skipped_records(self) -> int:
        """Returns the bad or too-long prompt records dropped."""
        return self.prompts.skipped_records

    def next(self, params: Any, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Returns (the step's rollout batch, rollout metrics)."""
        return self.rollouts(params, self.prompts, step)

    def step_args(self, step: int) -> dict[str, np.ndarray]:
        """Returns the KL coefficient and the step number the rollout step takes."""
        return {"kl_coef": np.float32(self.rollouts.kl.coef), "step": np.int32(step)}

    @staticmethod
    def step_args_layout(cfg: Config) -> dict:
        """Returns {key: (shape, dtype)} of `step_args`."""
        return {"kl_coef": ((), np.dtype(np.float32)), "step": ((), np.dtype(np.int32))}

    def observe(self, metrics: dict[str, float]) -> None:
        """Moves the KL coefficient after a finished step."""
        self.rollouts.observe(metrics)

    def get_state(self) -> dict:
        """Returns the prompt iterator's position and, under "rl", the KL coefficient."""
        return self.prompts.get_state() | {"rl": self.rollouts.get_state()}

    def set_state(self, state: dict) -> None:
        """Restores `get_state`'s position and KL coefficient."""
        self.prompts.set_state(state)
        self.rollouts.set_state(state["rl"])


def check(cfg: Config) -> None:
    """Raises MaxlmError when the rollout rows cannot split into updates, or the prompts over the processes,
    or the KL switches do not fit together."""
    r, t = cfg.rl, cfg.train  # each count's own range (> 0) is the loader's
    if r.kl_target > 0 and r.kl_in == "loss":
        raise MaxlmError(f"rl.kl_target ({r.kl_target}) adapts the KL penalty in the rewards, but rl.kl_in is loss "
                         "(a fixed rl.kl_coef there): set rl.kl_in: reward or rl.kl_target: 0")
    processes = jax.process_count()
    if processes > 1 and r.reward_model:
        raise MaxlmError(f"rl.reward_model runs in one process for now; use a verifier (rl.verifier) with {processes} processes")
    if t.global_batch_size % processes:
        raise MaxlmError(f"train.global_batch_size ({t.global_batch_size}) prompts must divide by the number of processes ({processes})")
    rows = t.global_batch_size * r.group_size
    if r.overlong_buffer > r.max_new_tokens:
        raise MaxlmError(f"rl.overlong_buffer ({r.overlong_buffer}) must be <= rl.max_new_tokens ({r.max_new_tokens}): it is the last "
                         "stretch of the completion budget where DAPO's overlong punishment grows")
    if rows % (r.minibatches * t.grad_accum_steps):
        raise MaxlmError(
            f"train.global_batch_size x rl.group_size = {rows} rollout rows must divide by "
            f"rl.minibatches ({r.minibatches}) x train.grad_accum_steps ({t.grad_accum_steps})"
        )


def check_grpo(cfg: Config) -> None:
    """Raises MaxlmError for `check`'s faults and for rl.* menu choices that do not fit together or need a value head."""
    check(cfg)
    r = cfg.rl
    if r.value_warmup_steps:
        raise MaxlmError(f"rl.value_warmup_steps ({r.value_warmup_steps}) warms up a value head: task grpo has none (ppo has)")
    if r.advantage == "reinforce_pp" and r.scale_rewards != "group":
        raise MaxlmError(f"rl.scale_rewards={r.scale_rewards} does not apply to rl.advantage=reinforce_pp, which always divides by the "
                         "std over the whole batch of the group-centred rewards (REINFORCE++-baseline); leave rl.scale_rewards at its default")
    if r.advantage == "rloo" and r.group_size < 2:
        raise MaxlmError(f"rl.advantage=rloo needs rl.group_size >= 2 (a leave-one-out mean of the others), got {r.group_size}")
    if r.dynamic_sampling and r.group_size < 2:
        raise MaxlmError(f"rl.dynamic_sampling drops groups of equal rewards: every group of rl.group_size={r.group_size} is one; use >= 2")


def check_ppo(cfg: Config) -> None:
    """Raises MaxlmError for `check`'s faults and for grpo-only rl.* keys set under task ppo."""
    check(cfg)
    r, default = cfg.rl, RLConfig()
    for key in ("advantage", "scale_rewards", "dynamic_sampling"):
        if getattr(r, key) != getattr(default, key):
            raise MaxlmError(f"rl.{key}={getattr(r, key)} is a grpo choice; task ppo's advantages are GAE on its value head "
                             f"(leave rl.{key} at {getattr(default, key)})")


def _data(value_head: bool):
    def data(cfg, tokenizer, graphdef, services) -> TaskData:
        rollouts, prompts = make_rollouts(cfg, tokenizer, graphdef, services, value_head)
        held_out = make_eval_rollouts(cfg, tokenizer, graphdef, services, value_head)
        evaluate = (lambda params, score: held_out.evaluate(params)) if held_out else None
        # The starting policy's held-out reward: the baseline every later eval_reward is read against.
        return TaskData(RolloutBatches(rollouts, prompts), evaluate, evaluate_start=True)

    return data


def _needs_reference(cfg: Config) -> bool:
    """Returns whether a ppo / grpo run scores its rollouts under the frozen reference."""
    # kl_target > 0 comes with rl.kl_in reward (check), whose adapted coefficient may start at 0.
    return cfg.rl.kl_coef > 0 or cfg.rl.kl_target > 0


def _split(cfg: Config) -> tuple[int, int]:
    return cfg.rl.group_size, cfg.rl.minibatches


PPO = Task(
    name="ppo", chat=True, scalar_head="value", data=_data(True),
    objective=lambda graphdef, cfg: policy_gradient(graphdef, cfg, True),
    step=lambda graphdef, cfg, tx, objective: rollout_step(graphdef, cfg, tx, True),
    needs_reference=_needs_reference, check=check_ppo, rollout_split=_split,
    batch_layout=lambda cfg: rollout_layout(cfg, True), step_args_layout=RolloutBatches.step_args_layout,
)
GRPO = Task(
    name="grpo", chat=True, scalar_head=None, data=_data(False),
    objective=lambda graphdef, cfg: policy_gradient(graphdef, cfg, False),
    step=lambda graphdef, cfg, tx, objective: rollout_step(graphdef, cfg, tx, False),
    needs_reference=_needs_reference, check=check_grpo, rollout_split=_split,
    batch_layout=lambda cfg: rollout_layout(cfg, False), step_args_layout=RolloutBatches.step_args_layout,
)
