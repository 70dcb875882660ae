"""The step as a run compiles it: the run's optimizer, the batch sharding, and the one `jax.jit` of the
task's step and of its held-out scoring. setup.py steps it on real arrays; aot.py lowers it on abstract ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from maxlm.config import Config
from maxlm.models import lora
from maxlm.optim import optimizer
from maxlm.optim.update import eval_step
from maxlm.parallel.rules import batch_sharding
from maxlm.tasks.task import Task


def run_optimizer(cfg: Config, task: Task):
    """Returns the run's optax transformation (an RL batch makes rl.epochs x rl.minibatches updates per step)."""
    split = task.rollout_split(cfg) if task.rollout_split else None
    return optimizer.optimizer(cfg.train, cfg.rl.epochs * split[1] if split else 1)


def jitted_step(cfg: Config, task: Task, graphdef, tx, mesh, p_shard, o_shard, has_reference: bool) -> tuple[Callable, Callable]:
    """Returns (step(params, opt_state, batch, ref_params, args) -> (params, opt_state, metrics), eval(params, batch, ref_params) -> sums), jitted."""
    objective = task.objective(graphdef, cfg)
    r_shard = p_shard if has_reference else None
    batch_shard = batch_sharding(mesh)
    step, evaluate = task.step(graphdef, cfg, tx, objective), eval_step(objective)
    if cfg.lora.rank and task.needs_reference(cfg):
        step, evaluate = _base_as_reference(step, evaluate)
    # The last argument holds the task's host scalars (RL's KL coefficient and step number).
    step_fn = jax.jit(
        step,
        in_shardings=(p_shard, o_shard, batch_shard, r_shard, None),
        out_shardings=(p_shard, o_shard, None),
        donate_argnums=(0, 1),
    )
    eval_fn = jax.jit(evaluate, in_shardings=(p_shard, batch_shard, r_shard))
    return step_fn, eval_fn


def _base_as_reference(step: Callable, evaluate: Callable) -> tuple[Callable, Callable]:
    """Returns (step, evaluate) of a LoRA run whose reference is its base: the params with the adapters off, the same arrays."""
    def lora_step(params, opt_state, batch, ref_params, args):
        return step(params, opt_state, batch, lora.adapters_off(params), args)

    def lora_evaluate(params, batch, ref_params=None):
        return evaluate(params, batch, lora.adapters_off(params))

    return lora_step, lora_evaluate


def abstract_batch(task: Task, cfg: Config, mesh) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (one step's global batch, its step arguments) as ShapeDtypeStructs from the task's layout, the batch sharded."""
    shard = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shard) for k, (shape, dtype) in task.batch_layout(cfg).items()}
    args = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in task.step_args_layout(cfg).items()}
    return batch, args
