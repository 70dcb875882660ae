"""The training loop of every task: step, log, evaluate, checkpoint, with one step in flight.

Step s+1 is dispatched before the metrics of step s are fetched, so the host never idles the
device waiting on a print. Batches that are sampled from the params the last step produced
(`Batches.follows_params`, RL) fetch each step at once instead: the next rollouts need those
params anyway, and the KL coefficient the step moves must be in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

from maxlm.config import to_dict
from maxlm.infer.pretrained import Pretrained
from maxlm.train.metrics import MetricsWriter, Window, peak_flops_per_device, train_flops_per_token
from maxlm.train.setup import Setup
from maxlm.train.trackers import open_trackers


class Preemption:
    """Turns SIGTERM into a stop the loop checks before each step.

    One process: its own handler sets the flag. Several, wired by jax.distributed: JAX's preemption
    service (which holds SIGTERM from jax.distributed.initialize on) gives every process the same step
    to stop before, whichever of them got the signal and when: a process that stopped a step earlier
    than the others would leave them waiting in that step's collectives, and itself in the
    checkpoint's, until Slurm's KillWait (or the cloud's grace period) ran out and the save was lost.
    """

    def __init__(self):
        self.requested = False
        # A TPU pod's processes can also run without jax.distributed (and its service): they keep the handler.
        self._shared = jax.process_count() > 1 and jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service
        self._old = None if self._shared else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_):
        self.requested = True

    def stops_before(self, step: int) -> bool:
        """Returns whether the loop stops before dispatching `step`; every process asks at every step."""
        if self._shared and not self.requested:
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def restore(self):
        """Puts back the SIGTERM handler that was there before (one process; JAX's service keeps its own)."""
        if not self._shared:
            signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass(frozen=True)
class StepEval:
    """An evaluation of the live model every `every` steps and at the last (every 0: the last only); `fn` returns metrics to log.

    Built outside train (the CLI builds train.eval_harness's from maxlm.eval), so that train needs no eval import.
    Every process calls it (a model's forward is a collective); process 0 logs what it returns.
    """

    every: int
    fn: Callable[[Pretrained], dict[str, float]]

    def due(self, step: int, last: int) -> bool:
        """Returns whether the evaluation runs after `step` of a run of `last` steps."""
        return step == last or bool(self.every and step % self.every == 0)


@dataclasses.dataclass
class Progress:
    """What the loop has done so far: per-step losses, the last eval loss, the last saved step, the fetch clock."""

    losses: dict[int, float]
    last_saved: int
    fetched_at: float
    eval_loss: float | None = None


@dataclasses.dataclass
class Pending:
    """A dispatched step whose metrics are not fetched yet."""

    step: int
    metrics: Any
    t_data: float
    extra: dict[str, float]


@dataclasses.dataclass
class Loop:
    """The loop's parts beside the setup: writer, metrics window, progress bar, throughput constants."""

    run: Setup
    writer: MetricsWriter
    window: Window
    progress: Progress
    pbar: Any
    flops_per_token: float
    peak: float | None
    step_evals: Sequence[StepEval] = ()

    def evaluates_at(self, step: int) -> bool:
        """Returns whether an evaluation (held-out or a step evaluation) runs after `step`: that step is then finished
        before the next is dispatched, so that it sees its own params."""
        t = self.run.cfg.train
        return self.evaluates_held_out(step) or any(e.due(step, t.steps) for e in self.step_evals)

    def evaluates_held_out(self, step: int) -> bool:
        """Returns whether the held-out evaluation (train.eval_every, and the last step) runs after `step`."""
        t = self.run.cfg.train
        return bool(t.eval_every and (step % t.eval_every == 0 or step == t.steps) and self.run.data.evaluate)

    def save(self, step: int) -> None:
        """Checkpoints `step`: params, optimizer state, config and the batches' position."""
        r = self.run
        self.writer.sync()  # the metrics of every step up to `step` outlive a kill -9 once it commits
        r.ckpts.save(step, r.state.saved_params(), r.cfg, r.state.opt_state, r.data.train.get_state(), base=r.state.base)
        self.progress.last_saved = step

    def evaluate(self, step: int) -> dict:
        """Returns the held-out metrics of the current params as eval_* entries of `step`'s record."""
        held_out = self.run.data.evaluate(self.run.state.params, self.run.score)
        self.progress.eval_loss = held_out.get("loss")
        self.progress.fetched_at = time.perf_counter()  # eval time is not training throughput
        return {"step": step} | {f"eval_{k}": v for k, v in held_out.items()}

    def finish(self, p: Pending) -> None:
        """Consumes the metrics of a dispatched step (waiting for it to finish): guards, logs, evals."""
        r, t = self.run, self.run.cfg.train
        m = {k: float(v) for k, v in jax.device_get(p.metrics).items()} | p.extra
        # Wall time between consecutive fetches: the step's compute finishes inside device_get.
        now = time.perf_counter()
        t_wall, self.progress.fetched_at = now - self.progress.fetched_at, now
        self.window.add(p.step, m, t_wall, p.t_data)
        r.data.train.observe(m)
        self.progress.losses[p.step] = m["loss"]
        last = p.step == t.steps
        record = None
        if p.step % t.log_every == 0 or last:
            lr = float(r.lr_at(p.step - 1))
            record = self.window.record(p.step, lr, self.flops_per_token, self.peak, int(r.data.train.skipped_records))
        if self.evaluates_held_out(p.step):
            record = (record or {}) | self.evaluate(p.step)
        due = [e for e in self.step_evals if e.due(p.step, t.steps)]
        if due:
            model = Pretrained(r.cfg, r.state.params, r.graphdef, r.tokenizer, r.mesh)
            record = (record or {"step": p.step}) | {k: v for e in due for k, v in e.fn(model).items()}
            self.progress.fetched_at = time.perf_counter()  # eval time is not training throughput
        if record:
            self.writer.write(record)
            self.pbar.set_postfix(loss=f"{record.get('loss', m['loss']):.3f}", refresh=False)
        self.pbar.update(1)

    def dispatch(self, step: int) -> Pending:
        """Returns the step, dispatched on its batch (the batch is made on the host first)."""
        r = self.run
        t0 = time.perf_counter()
        local, extra = r.data.train.next(r.state.params, step)
        batch = r.to_global(local)
        t_data = time.perf_counter() - t0
        r.state.params, r.state.opt_state, m = r.step_fn(r.state.params, r.state.opt_state, batch, r.ref_params, r.data.train.step_args(step))
        r.state.step = step
        return Pending(step, m, t_data, extra)


def make_loop(run: Setup, step_evals: Sequence[StepEval] = ()) -> Loop:
    """Returns the loop of a set-up run, its metrics file cut back to the restored step."""
    cfg = run.cfg
    trackers = open_trackers(cfg.train.trackers, run.run_dir, to_dict(cfg)) if run.main else []
    writer = MetricsWriter(run.run_dir, enabled=run.main, trackers=trackers)
    writer.truncate_after(run.state.step)
    window = Window(
        cfg.train.max_consecutive_nonfinite, bool(cfg.train.z_loss), run.data.train.follows_params,
        writer.last_value("tokens_trained", 0.0) if run.task.logs_tokens_trained else None,
    )
    pbar = tqdm(total=cfg.train.steps, initial=run.state.step, disable=not run.main, desc="train", unit="step", dynamic_ncols=True)
    progress = Progress({}, run.state.step, time.perf_counter())
    flops = train_flops_per_token(cfg.model, cfg.data.seq_len)
    return Loop(run, writer, window, progress, pbar, flops, peak_flops_per_device(), tuple(step_evals))


def run_loop(loop: Loop, preemption: Preemption, log=print) -> None:
    """Steps from the restored step to train.steps (or a SIGTERM), checkpointing on the way and at the end."""
    r = loop.run
    cfg = r.cfg
    if r.state.step < cfg.train.steps:
        log("compiling the train step ...")
    pending = None
    with jax.set_mesh(r.mesh):
        if r.data.evaluate and r.data.evaluate_start and cfg.train.eval_every and r.state.step == 0:
            loop.writer.write(loop.evaluate(0))
        for step in range(r.state.step + 1, cfg.train.steps + 1):
            if preemption.stops_before(step):
                break
            dispatched = loop.dispatch(step)
            if pending:
                loop.finish(pending)
            pending = dispatched
            if r.data.train.follows_params or loop.evaluates_at(step):  # an evaluation sees this step's params
                loop.finish(pending)
                pending = None
            if step % cfg.checkpoint.interval_steps == 0:
                if pending:  # its metrics line is written before its checkpoint can commit
                    loop.finish(pending)
                    pending = None
                loop.save(step)
        if pending:
            loop.finish(pending)
        if r.state.step != loop.progress.last_saved:
            loop.save(r.state.step)
        r.ckpts.close()
    loop.pbar.close()
    loop.writer.close()
