"""What a task is to the run that trains it: the same few answers for every `task:` name.

A run asks its task for its batches (host side: the next local batch, its state for a
checkpoint), their layout (the shapes `maxlm compile` builds a step from without reading data), its objective, its step, whether it compares with a frozen reference, what its
scalar head is, whether its prompts and samples are chat or plain text, and checks the config
with it before any work. `maxlm.tasks.TASKS` maps each `task:` name to one `Task`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import numpy as np

from maxlm.config import Config
from maxlm.data.examples import record_texts
from maxlm.data.pipeline import Annotation, DataIterator, batch_layout, make_eval_batches, make_train_iterator
from maxlm.data.sources import train_sources
from maxlm.data.tokenizers import Tokenizer
from maxlm.models.moe import router_losses
from maxlm.optim.update import Objective, train_step
from maxlm.parallel.rules import batch_rows


class Batches(Protocol):
    """A task's training batches on the host: the next local batch and a resumable position."""

    follows_params: bool  # the next batch is sampled from the params the last step produced
    skipped_records: int

    def next(self, params: Any, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Returns (this process's batch for `step`, host metrics of making it)."""

    def step_args(self, step: int) -> dict[str, np.ndarray]:
        """Returns the host scalars the step takes beside the batch."""

    def observe(self, metrics: dict[str, float]) -> None:
        """Takes the finished step's metrics (RL's adaptive KL coefficient moves on them)."""

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


@dataclasses.dataclass
class DataBatches:
    """The batches of a task that reads them from files: the checkpointable data iterator as it is."""

    iterator: DataIterator
    follows_params = False

    @property
    def skipped_records(self) -> int:
        """Returns the bad records dropped from the training files."""
        return self.iterator.skipped_records

    def next(self, params: Any, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Returns (the iterator's next batch, no metrics)."""
        return next(self.iterator), {}

    def step_args(self, step: int) -> dict:
        """Returns no step arguments: the batch is everything."""
        return {}

    def observe(self, metrics: dict[str, float]) -> None:
        """Does nothing: file batches do not depend on the training."""

    def get_state(self) -> dict:
        """Returns the iterator's position."""
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        """Moves the iterator to a saved position."""
        self.iterator.set_state(state)


@dataclasses.dataclass(frozen=True)
class Services:
    """What a task's batches may use from the layers above it (the run builds it; tasks sit below infer).

    reference(): the frozen reference model's params; generate: the one batched generation
    (`maxlm.infer.generate.generate_batched`, rows cut at the stop ids and decoded);
    reward_model(path): a loaded `task: rm` model that scores replies.
    """

    mesh: Any
    log: Callable[[str], None]
    reference: Callable[[], Any]
    generate: Callable
    reward_model: Callable[[str], Any]


@dataclasses.dataclass
class TaskData:
    """A run's data for its task: training batches and the held-out evaluation (None without eval data).

    evaluate(params, score) -> held-out metrics, where score(params, local_batch) returns the
    objective's sums of one batch; `evaluate_start`: also evaluate the starting params at step 0.
    """

    train: Batches
    evaluate: Callable[[Any, Callable], dict[str, float]] | None = None
    evaluate_start: bool = False


def with_router_losses(loss, sums: dict, router: dict, aux_coef: float, z_coef: float) -> tuple[Any, dict]:
    """Returns (loss, sums) with an MoE model's router losses added, weighted by `aux_coef` / `z_coef` and
    reported as router_aux_loss / router_z_loss; unchanged for a dense model (`router` empty).

    Each is the batch's mean times its `count`: the step divides the summed objective by the count,
    which leaves the per-batch mean under gradient accumulation, whatever the task counts.
    """
    if not router:
        return loss, sums
    aux, rz = router_losses(router)
    count = sums["count"]
    return loss + count * (aux_coef * aux + z_coef * rz), sums | {"router_aux_loss_sum": count * aux, "router_z_loss_sum": count * rz}


def held_out_means(score: Callable, params: Any, batches: list[dict]) -> dict[str, float]:
    """Returns the held-out metrics over `batches` ({"loss": ..., task metrics}): each `x_sum` over the summed count."""
    total: dict[str, float] = {}
    for b in batches:
        for k, v in score(params, b).items():
            total[k] = total.get(k, 0.0) + float(v)
    count = max(total["count"], 1.0)
    return {k[:-4]: v / count for k, v in total.items() if k.endswith("_sum") and k != "z_loss_sum"}


Layout = dict[str, tuple[tuple[int, ...], np.dtype]]  # {key: (shape, dtype)}


def file_batch_layout(cfg: Config) -> Layout:
    """Returns the layout of one step's global batch of a task that reads files (train.global_batch_size rows)."""
    return batch_layout(cfg, cfg.train.global_batch_size)


def no_step_args(cfg: Config) -> Layout:
    """Returns the layout of no step arguments: the batch is everything."""
    return {}


def no_check(cfg: Config) -> None:
    """Accepts every config: the task adds no checks of its own."""


def record_text_source(cfg: Config) -> Callable[[], Iterable[str]]:
    """Returns texts() -> the message and completion texts of the training records (to train a tokenizer on)."""
    return lambda: (t for s in train_sources(cfg.data) for t in record_texts(s.path, cfg.task, cfg.data.on_bad_record, s.rows))


@dataclasses.dataclass(frozen=True)
class Task:
    """One `task:` name and its answers; see the module docstring."""

    name: str
    chat: bool  # prompts and samples are chat (the run's template), else plain text after BOS
    scalar_head: Literal["reward", "value"] | None  # a reward model's head, PPO's value head, or none
    data: Callable[[Config, Tokenizer, Any, Services], TaskData]
    objective: Callable[[Any, Config], Objective]
    step: Callable[[Any, Config, Any, Objective], Callable]  # (graphdef, cfg, tx, objective) -> step(p, o, batch, ref, args)
    needs_reference: Callable[[Config], bool]
    check: Callable[[Config], None] = no_check  # before any work: mesh, data or compile
    samples: bool = True  # end-of-run samples (a reward model writes no text)
    logs_tokens_trained: bool = False  # the run's running count of tokens that carried a loss
    rollout_split: Callable[[Config], tuple[int, int]] | None = None  # (rows per prompt, updates per batch)
    tokenizer_texts: Callable[[Config], Callable[[], Iterable[str]] | None] = record_text_source
    batch_layout: Callable[[Config], Layout] = file_batch_layout  # one step's global batch, as `data` makes it
    step_args_layout: Callable[[Config], Layout] = no_step_args  # the host scalars of `Batches.step_args`


def gradient_step(graphdef: Any, cfg: Config, tx: Any, objective: Objective) -> Callable:
    """Returns step(params, opt_state, batch, ref_params, args) -> (params, opt_state, metrics): one update on the batch."""
    update = train_step(objective, tx, cfg.train,
                        frozen_base=cfg.lora.rank > 0, dropout=cfg.lora.rank > 0 and cfg.lora.dropout > 0)

    def step(params, opt_state, batch, ref_params, args):
        del args  # a file batch needs no host scalars
        return update(params, opt_state, batch, ref_params)

    return step


def file_data(cfg: Config, tokenizer: Tokenizer, mesh: Any, annotation: Annotation | None = None) -> TaskData:
    """Returns the TaskData of a task that reads data.train_files (and data.eval_files for held-out metrics):
    the rows of each global batch that this process's devices of `mesh` hold."""
    rows = batch_rows(mesh, cfg.train.global_batch_size)
    train = DataBatches(make_train_iterator(cfg, tokenizer, rows, annotation))
    eval_batches = make_eval_batches(cfg, tokenizer, cfg.train.eval_steps, rows, annotation) if cfg.data.eval_files else []
    if not eval_batches:
        return TaskData(train)
    return TaskData(train, lambda params, score: held_out_means(score, params, eval_batches))
