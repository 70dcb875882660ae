"""The task table: each `task:` name to its `Task` (batches, objective, step, reference, head, checks).

lm.py: pretrain, sft; pairs.py: rm, dpo; rl/: ppo, grpo. A new task is a module here and a row below.
"""

from __future__ import annotations

from maxlm.config import Config
from maxlm.errors import MaxlmError
from maxlm.tasks.lm import PRETRAIN, SFT
from maxlm.tasks.pairs import DPO, RM
from maxlm.tasks.rl import GRPO, PPO
from maxlm.tasks.task import Task

TASKS: dict[str, Task] = {t.name: t for t in (PRETRAIN, SFT, RM, DPO, PPO, GRPO)}


def has_reward_head(cfg: Config) -> bool:
    """Returns whether the model of a run with `cfg` is a reward model: a scalar head that is not PPO's value head."""
    return cfg.model.scalar_head and TASKS[cfg.task].scalar_head != "value"


def require_reward_model(cfg: Config, what: str) -> None:
    """Raises MaxlmError naming `what` unless the model of a run with `cfg` is a reward model."""
    if not has_reward_head(cfg):
        why = "a ppo run's scalar head is its value head" if cfg.model.scalar_head else "it has no scalar head"
        raise MaxlmError(f"{what}: not a reward model ({why}); train one with task: rm")
