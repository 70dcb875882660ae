"""Everything a run holds before its first step: mesh, tokenizer, the task's data, optimizer,
shardings, the state (fresh, `init_from` or resumed), and the jitted step and eval functions.

`setup(cfg)` takes a config whose `train.init_from` names a run or checkpoint (run.py resolves a
config path first) and returns a `Setup`; loop.py runs it.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from maxlm import config as config_lib
from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config
from maxlm.data.tokenizers import Tokenizer, ensure_tokenizer
from maxlm.errors import MaxlmError
from maxlm.infer.generate import generate_batched
from maxlm.infer.pretrained import Pretrained
from maxlm.infer.replies import load_scoring_model
from maxlm.models import lora
from maxlm.models import params as params_lib
from maxlm.optim import optimizer
from maxlm.parallel.mesh import data_parallel_size
from maxlm.parallel.rules import batch_sharding
from maxlm.tasks import TASKS
from maxlm.tasks.task import Services, Task, TaskData
from maxlm.train import metrics as metrics_lib
from maxlm.train import state as state_lib
from maxlm.train import step as step_lib
from maxlm.train.resume import check_resumable


@dataclasses.dataclass
class Setup:
    """A run ready to step: its config, task, data, state and compiled functions."""

    cfg: Config
    task: Task
    mesh: Any
    run_dir: Path
    main: bool  # process 0: writes metrics, samples, plots and exports
    tokenizer: Tokenizer
    graphdef: Any
    data: TaskData
    ckpts: Checkpoints
    state: state_lib.TrainState
    ref_params: Any
    step_fn: Callable  # jitted (params, opt_state, batch, ref_params, args) -> (params, opt_state, metrics)
    score: Callable  # score(params, local_batch) -> the objective's sums (held-out metrics)
    to_global: Callable[[dict], dict]
    lr_at: Callable[[int], Any]


def check_fits(cfg: Config, task: Task, mesh) -> None:
    """Raises MaxlmError when the batch cannot be split over the data-parallel devices."""
    dp = data_parallel_size(mesh)
    # Rollouts: prompts x group_size rows, split into rl.minibatches updates.
    split = task.rollout_split(cfg) if task.rollout_split else None
    group, parts = split or (1, 1)
    micro = cfg.train.global_batch_size * group // parts // cfg.train.grad_accum_steps
    if micro % dp:
        raise MaxlmError(
            f"train.global_batch_size ({cfg.train.global_batch_size})" + (f" x rl.group_size ({group}) / rl.minibatches ({parts})" if split else "")
            + f" / train.grad_accum_steps ({cfg.train.grad_accum_steps}) = {micro} rows per update is not divisible by the "
            f"data-parallel size {dp} (mesh.data x mesh.fsdp)"
        )


def resolve_vocab(cfg: Config, vocab_size: int) -> Config:
    """Returns cfg with model.vocab_size set from the tokenizer when it was left at 0."""
    if cfg.model.vocab_size == 0:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))
    if cfg.model.vocab_size < vocab_size:
        raise MaxlmError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's ({vocab_size})")
    return cfg


def with_task_head(cfg: Config) -> Config:
    """Returns cfg with model.scalar_head set when the task has one (a reward model's head, PPO's value head)."""
    if TASKS[cfg.task].scalar_head and not cfg.model.scalar_head:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scalar_head=True))
    return cfg


def services(cfg: Config, mesh, log) -> Services:
    """Returns what the task's batches may use from the layers above the tasks."""
    return Services(
        mesh=mesh, log=log, reference=lambda: state_lib.reference_params(cfg, mesh), generate=generate_batched,
        # cached: the training and the held-out rollouts score with one loaded reward model
        reward_model=functools.cache(lambda path: load_scoring_model(path, reward=True)),
    )


def check_sample_prompts(cfg: Config, task: Task, tokenizer: Tokenizer, graphdef, mesh) -> None:
    """Raises MaxlmError when an end-of-run sample prompt leaves no room for sample.max_new_tokens (found before training, not after)."""
    if not cfg.sample.prompts or not task.samples:
        return
    ids, _ = Pretrained(cfg, None, graphdef, tokenizer, mesh).encode_prompts(cfg.sample.prompts)
    limit = cfg.model.max_seq_len
    for i, prompt in enumerate(ids):
        if len(prompt) + cfg.sample.max_new_tokens > limit:
            raise MaxlmError(f"sample.prompts[{i}] is {len(prompt)} tokens; with sample.max_new_tokens={cfg.sample.max_new_tokens} "
                             f"it exceeds model.max_seq_len={limit}")


def setup(cfg: Config, mesh, log=print) -> Setup:
    """Returns the run of `cfg` on `mesh` ready to step (checked, resumed or initialized, compiled lazily)."""
    task = TASKS[cfg.task]
    cfg = state_lib.resolve_init_from(cfg)
    run_dir = Path(cfg.run_dir).resolve()
    main = jax.process_index() == 0
    tokenizer = ensure_tokenizer(cfg, task.tokenizer_texts(cfg))
    cfg = resolve_vocab(cfg, tokenizer.vocab_size)
    check_resumable(cfg)  # before config.yaml is rewritten and before any compile
    graphdef, _, _ = params_lib.abstract(cfg.model, cfg.lora if cfg.lora.rank else None)
    check_sample_prompts(cfg, task, tokenizer, graphdef, mesh)
    if main:
        config_lib.dump_yaml(cfg, run_dir / "config.yaml")
    data = task.data(cfg, tokenizer, graphdef, services(cfg, mesh, log))
    tx = step_lib.run_optimizer(cfg, task)
    ckpts = Checkpoints(run_dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    state, data_state, p_shard, o_shard = state_lib.restore_or_init(cfg, mesh, tx, ckpts)
    if data_state is not None:
        data.train.set_state(data_state)
        log(f"resumed from {ckpts.directory}/{state.step}")
    n_params = metrics_lib.param_count(cfg.model)
    log(f"model: {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}, {jax.device_count()} {jax.devices()[0].platform} devices")
    if cfg.lora.rank:
        n_train = lora.count(lora.trainable(state.params))
        log(f"lora: rank {cfg.lora.rank} on {','.join(cfg.lora.targets)}: {n_train:,} trainable params "
            f"({100 * n_train / lora.count(state.params):.3f}% of {lora.count(state.params):,}); the base is frozen")
    # A LoRA run's reference is its own base with the adapters off (_compiled): no second model in memory.
    ref_params = state_lib.reference_params(cfg, mesh) if task.needs_reference(cfg) and not cfg.lora.rank else None
    step_fn, score, to_global = _compiled(cfg, task, graphdef, tx, mesh, p_shard, o_shard, ref_params)
    return Setup(cfg, task, mesh, run_dir, main, tokenizer, graphdef, data, ckpts, state, ref_params, step_fn, score, to_global,
                 optimizer.schedule(cfg.train))


def _compiled(cfg: Config, task: Task, graphdef, tx, mesh, p_shard, o_shard, ref_params) -> tuple[Callable, Callable, Callable]:
    """Returns (the jitted step, score(params, local batch) -> eval sums, to_global(local batch) -> global arrays)."""
    step_fn, eval_fn = step_lib.jitted_step(cfg, task, graphdef, tx, mesh, p_shard, o_shard, ref_params is not None)
    batch_shard = batch_sharding(mesh)

    def to_global(batch: dict) -> dict:
        return {k: jax.make_array_from_process_local_data(batch_shard, np.asarray(v)) for k, v in batch.items()}

    def score(params, batch: dict) -> dict:
        return jax.device_get(eval_fn(params, to_global(batch), ref_params))

    return step_fn, score, to_global
