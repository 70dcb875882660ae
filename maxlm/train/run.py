"""`maxlm train` for every task (pretrain, sft, rm, dpo, ppo, grpo): check, set up, loop, then
samples, loss curve and export. The task (`maxlm.tasks.TASKS`) decides the batches, objective and
step; setup.py builds the run, loop.py steps it.

A config may name another config as its starting point (`train.init_from: sft.yaml`): that run
is trained first, here and only here, so a DPO or RM config builds its own SFT model on a fresh
checkout.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from maxlm.ckpt.hf import export_hf
from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config, load_config, validate
from maxlm.infer.prompts import encode_prompts, until_stop
from maxlm.infer.sampler import generate
from maxlm.parallel.distributed import initialize_from_env
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks import TASKS
from maxlm.train.loop import Preemption, make_loop, run_loop
from maxlm.train.metrics import MetricsWriter
from maxlm.train.run_dir import locked
from maxlm.train.setup import Setup, check_fits, setup, with_task_head


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


def start_from_config(cfg: Config, log=print) -> Config:
    """Returns cfg with a `train.init_from` config path replaced by that config's run dir, training it first unless it has finished."""
    path = cfg.train.init_from
    if not path.endswith((".yaml", ".yml")):
        return cfg
    src = load_config(path)
    done = Checkpoints(src.run_dir, read_only=True).latest_step()
    if done is None or done < src.train.steps:
        log(f"train.init_from {path}: training the starting point into {src.run_dir} first")
        train(src, log=log)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=src.run_dir))


def train(cfg: Config, *, log=print) -> RunResult:
    """Runs (or resumes) a run of any task and returns what it produced."""
    initialize_from_env()
    with locked(cfg.run_dir, jax.process_index()):  # held through the init_from recursion too
        return _train(cfg, log)


def _train(cfg: Config, log) -> RunResult:
    """The run itself, with its run dir locked."""
    validate(cfg)  # a config built in Python has not met the loader
    task = TASKS[cfg.task]
    task.check(cfg)
    cfg = with_task_head(cfg)
    mesh = make_mesh(cfg.mesh)
    check_fits(cfg, task, mesh)
    run = setup(start_from_config(cfg, log), mesh, log)
    loop = make_loop(run)
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
            out = Path(run.cfg.export.hf_dir)
            result.hf_dir = export_hf(run.run_dir, out if out.is_absolute() else run.run_dir / out)
            log(f"Hugging Face export: {result.hf_dir}")
    if jax.process_count() > 1:
        # Otherwise the other processes reach JAX's shutdown barrier first, and it times out
        # while process 0 is still exporting.
        multihost_utils.sync_global_devices("maxlm: end of run")


def write_samples(run: Setup, log, write: bool = True) -> list[str]:
    """Returns the end-of-run samples (with `write`, also written to run_dir/samples.txt and logged)."""
    cfg, tokenizer = run.cfg, run.tokenizer
    if not cfg.sample.prompts or not run.task.samples:
        return []
    s = cfg.sample
    prompts, stops = encode_prompts(cfg, tokenizer, s.prompts)
    out = generate(
        run.graphdef, cfg.model, run.state.params, prompts, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
        stop_ids=stops, seed=cfg.train.seed,
    )
    joint = " -> " if run.task.chat else ""
    texts = [p + joint + tokenizer.decode(until_stop(row, stops)) for p, row in zip(s.prompts, out[:, -s.max_new_tokens:])]
    if write:
        (run.run_dir / "samples.txt").write_text("\n\n".join(texts) + "\n")
        log("samples:\n" + "\n".join(f"  > {t!r}" for t in texts))
    return texts
