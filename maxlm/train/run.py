"""`maxlm train` for every task (pretrain, sft, rm, dpo, ppo, grpo): check, set up, loop, then
samples, loss curve and export. The task (`maxlm.tasks.TASKS`) decides the batches, objective and
step; setup.py builds the run, loop.py steps it.

A config may name another config as its starting point (`train.init_from: sft.yaml`): that run
is trained first, here and only here, so a DPO or RM config builds its own SFT model on a fresh
checkout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from maxlm.ckpt.hf import export_hf, exported_from
from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config, load_config, validate
from maxlm.errors import MaxlmError
from maxlm.files import atomic
from maxlm.files.outputs import check_output_dir
from maxlm.infer.pretrained import Pretrained
from maxlm.parallel.distributed import initialize_from_env
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks import TASKS
from maxlm.tasks.task import Task
from maxlm.train.loop import Preemption, StepEval, make_loop, run_loop
from maxlm.train.metrics import MetricsWriter
from maxlm.train.run_dir import locked
from maxlm.train.setup import Setup, check_fits, setup, with_task_head
from maxlm.train.trackers import check_trackers


@dataclasses.dataclass
class RunResult:
    """What a finished (or preempted) run produced."""

    run_dir: Path
    step: int
    losses: dict[int, float]
    eval_loss: float | None = None
    samples: list[str] = dataclasses.field(default_factory=list)
    hf_dir: Path | None = None
    preempted: bool = False


# What a run writes into its run_dir: a directory holding one of these is a run to resume.
RUN_FILES = ("config.yaml", "checkpoints", "metrics.jsonl", "tokenizer.model", ".lock")

# Builds the step evaluations a config asks for (train.eval_harness); given by the caller, as train cannot import eval.
StepEvals = Callable[[Config], Sequence[StepEval]]


def start_from_config(cfg: Config, log=print, step_evals: StepEvals | None = None) -> tuple[Config, bool]:
    """Returns (cfg with a `train.init_from` config path replaced by that config's run dir, whether a SIGTERM
    stopped it), training that config first unless it has finished."""
    path = cfg.train.init_from
    if not path.endswith((".yaml", ".yml")):
        return cfg, False
    src = load_config(path)
    done = Checkpoints(src.run_dir, read_only=True).latest_step()
    stopped = False
    if done is None or done < src.train.steps:
        log(f"train.init_from {path}: training the starting point into {src.run_dir} first")
        stopped = train(src, log=log, step_evals=step_evals).preempted
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=src.run_dir)), stopped


def export_dir(cfg: Config) -> Path | None:
    """Returns the resolved `export.hf_dir` of a run (relative paths are inside run_dir), or None."""
    if not cfg.export.hf_dir:
        return None
    out = Path(cfg.export.hf_dir)
    return (out if out.is_absolute() else Path(cfg.run_dir) / out).resolve()


def check_outputs(cfg: Config) -> None:
    """Raises MaxlmError when run_dir or export.hf_dir holds files this run did not write."""
    run_dir = Path(cfg.run_dir).resolve()

    def ours() -> bool:  # asked after the listing: another process of this run may lock the dir (.lock) in between
        return any((run_dir / n).exists() for n in RUN_FILES) or any(run_dir.glob(".lock.*"))

    check_output_dir(run_dir, "run_dir", None, ours=ours,
                     what=" and holds no maxlm run (config.yaml, checkpoints/)")
    out = export_dir(cfg)
    if out is not None and not out.is_relative_to(run_dir):
        check_output_dir(out, "export.hf_dir", None, ours=exported_from(out) == str(run_dir),
                         what=" and holds no export of this run")


def train(cfg: Config, *, log=print, step_evals: StepEvals | None = None) -> RunResult:
    """Runs (or resumes) a run of any task and returns what it produced.

    `step_evals` builds the evaluations of the live model that the config asks for (the CLI
    passes maxlm.eval's train.eval_harness); a config that asks for one without it is refused.
    """
    initialize_from_env()
    validate(cfg)  # a config built in Python has not met the loader
    evals = tuple(step_evals(cfg)) if step_evals else ()  # before any compile: a bad task name stops the run here
    if cfg.train.eval_harness.tasks and not evals:
        raise MaxlmError("train.eval_harness.tasks is set but nothing evaluates it: run `maxlm train`, or pass "
                         "step_evals=maxlm.eval.harness.train_step_evals to train()")
    check_trackers(cfg.train.trackers)
    task = TASKS[cfg.task]
    task.check(cfg)
    cfg = with_task_head(cfg)
    mesh = make_mesh(cfg.mesh)
    check_fits(cfg, task, mesh)
    check_outputs(cfg)  # all before the lock: a refused config leaves nothing behind
    with locked(cfg.run_dir, jax.process_index()):  # held through the init_from recursion too
        return _train(cfg, task, mesh, log, evals, step_evals)


def _train(cfg: Config, task: Task, mesh, log, evals: Sequence[StepEval], step_evals: StepEvals | None) -> RunResult:
    """The run itself, with its run dir locked."""
    if jax.process_index() == 0:
        atomic.remove_stale_tmp(cfg.run_dir)  # half-written metrics or config of a killed run; locked: none is live
    cfg, stopped = start_from_config(cfg, log, step_evals)
    if stopped:
        log(f"SIGTERM while training the starting point {cfg.train.init_from}; rerun the same command to resume it")
        return RunResult(Path(cfg.run_dir).resolve(), 0, {}, preempted=True)
    run = setup(cfg, mesh, log)
    loop = make_loop(run, evals)
    preemption = Preemption()
    try:
        run_loop(loop, preemption, log)
    finally:
        preemption.restore()
    p = loop.progress
    result = RunResult(run.run_dir, run.state.step, p.losses, p.eval_loss, preempted=preemption.requested)
    if preemption.requested:
        log(f"SIGTERM: saved step {run.state.step} to {run.ckpts.directory} and stopped; rerun the same command to resume")
        return result
    finish_run(run, loop.writer, result, log)
    return result


def finish_run(run: Setup, writer: MetricsWriter, result: RunResult, log) -> None:
    """Writes the end-of-run samples, loss curve and Hugging Face export into `result` (process 0 writes)."""
    # The sampler is a collective: every process samples, process 0 writes.
    result.samples = write_samples(run, log, write=run.main)
    if run.main:
        plot = writer.plot_loss()
        if plot:
            log(f"loss curve: {plot}")
        if run.cfg.export.hf_dir:
            # check_outputs let only the run's own export dir through: its earlier export is replaced.
            result.hf_dir = export_hf(run.run_dir, export_dir(run.cfg), overwrite=True)
            log(f"Hugging Face export: {result.hf_dir}")
    if jax.process_count() > 1:
        # Otherwise the other processes reach JAX's shutdown barrier first, and it times out
        # while process 0 is still exporting.
        multihost_utils.sync_global_devices("maxlm: end of run")


def write_samples(run: Setup, log, write: bool = True) -> list[str]:
    """Returns the end-of-run samples (with `write`, also written to run_dir/samples.txt and logged)."""
    cfg, s = run.cfg, run.cfg.sample
    if not s.prompts or not run.task.samples:
        return []
    model = Pretrained(cfg, run.state.params, run.graphdef, run.tokenizer, run.mesh)
    ids, stops = model.encode_prompts(s.prompts)
    out = model.generate_batched(ids, s.max_new_tokens, stop_ids=stops, seed=cfg.train.seed, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    joint = " -> " if run.task.chat else ""
    texts = [p + joint + text for p, text in zip(s.prompts, out.texts)]
    if write:
        atomic.write_text(run.run_dir / "samples.txt", "\n\n".join(texts) + "\n")
        log("samples:\n" + "\n".join(f"  > {t!r}" for t in texts))
    return texts
