"""`maxlm train` for every task (pretrain, sft, rm, dpo, ppo, grpo) — set up, step, log, checkpoint,
sample, export. The task decides the batches (`data.pipeline`, or `train.rollouts` sampled from
the policy for ppo/grpo) and the objective (`train.objectives`); everything else is shared.

The loop keeps one step in flight: step s+1 is dispatched before the metrics of step s
are fetched, so the host never idles the device waiting on a print.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from maxlm import config as config_lib
from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config
from maxlm.data.pipeline import make_eval_batches, make_train_iterator
from maxlm.data.tokenizers import ensure_tokenizer
from maxlm.errors import MaxlmError
from maxlm.models import params as params_lib
from maxlm.parallel.distributed import initialize_from_env
from maxlm.parallel.mesh import data_parallel_size, make_mesh
from maxlm.train import metrics as metrics_lib
from maxlm.train import objectives, optim, rollouts as rollouts_lib, state as state_lib, steps as steps_lib


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


def check_fits(cfg: Config, mesh) -> None:
    """Raises MaxlmError when the batch cannot be split over the data-parallel devices."""
    dp = data_parallel_size(mesh)
    rl = cfg.task in ("ppo", "grpo")  # rollouts: prompts x group_size rows, split into rl.minibatches updates
    group, parts = (cfg.rl.group_size, cfg.rl.minibatches) if rl else (1, 1)
    micro = cfg.train.global_batch_size * group // parts // cfg.train.grad_accum_steps
    if micro % dp:
        raise MaxlmError(
            f"train.global_batch_size ({cfg.train.global_batch_size})" + (f" x rl.group_size ({group}) / rl.minibatches ({parts})" if rl else "")
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


def precomputed_reference(cfg: Config) -> bool:
    """Returns whether the reference's log-probs are scored once up front instead of every step."""
    return cfg.task == "dpo" and cfg.dpo.precompute_ref and objectives.needs_reference(cfg)


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def evaluate(eval_fn, params, batches, to_global, ref_params=None) -> dict | None:
    """Returns the held-out metrics over `batches` ({"loss": ..., task metrics}), or None without eval data."""
    if not batches:
        return None
    total: dict[str, float] = {}
    for b in batches:
        out = jax.device_get(eval_fn(params, to_global(b), ref_params))
        for k, v in out.items():
            total[k] = total.get(k, 0.0) + float(v)
    count = max(total["count"], 1.0)
    return {k[:-4]: v / count for k, v in total.items() if k.endswith("_sum") and k != "z_loss_sum"}


def train(cfg: Config, *, log=print) -> RunResult:
    """Runs (or resumes) a run of any task and returns what it produced."""
    initialize_from_env()
    if cfg.task in ("rm", "ppo") and not cfg.model.scalar_head:
        # A reward model is its scalar head; PPO's value head is one on the policy's trunk.
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scalar_head=True))
    mesh = make_mesh(cfg.mesh)
    check_fits(cfg, mesh)
    cfg = state_lib.resolve_init_from(cfg, log)
    run_dir = Path(cfg.run_dir).resolve()
    main = jax.process_index() == 0
    tokenizer = ensure_tokenizer(cfg)
    cfg = resolve_vocab(cfg, tokenizer.vocab_size)
    if main:
        config_lib.dump_yaml(cfg, run_dir / "config.yaml")
    graphdef, _, _ = params_lib.abstract(cfg.model)
    rollouts = eval_rollouts = None
    if cfg.task in ("ppo", "grpo"):
        rollouts, train_it = rollouts_lib.make_rollouts(cfg, tokenizer, graphdef)
        eval_rollouts = rollouts_lib.make_eval_rollouts(cfg, tokenizer, graphdef)
        eval_batches = []
    else:
        annotate = None
        if precomputed_reference(cfg):
            from maxlm.train import reference

            log("dpo.precompute_ref: scoring every example under the reference once ...")
            score = reference.scorer(graphdef, state_lib.reference_params(cfg, mesh), NamedSharding(mesh, PartitionSpec(("data", "fsdp"))))
            annotate = lambda examples: reference.annotate(score, examples, cfg, tokenizer.pad_id)
        train_it = make_train_iterator(cfg, tokenizer, annotate=annotate)
        eval_batches = make_eval_batches(cfg, tokenizer, cfg.train.eval_steps, annotate=annotate) if cfg.data.eval_files else []
        annotate = score = None  # frees the reference's params

    tx = optim.optimizer(cfg.train, cfg.rl.epochs * cfg.rl.minibatches if rollouts else 1)
    lr_at = optim.schedule(cfg.train)
    ckpts = Checkpoints(run_dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    state, data_state, p_shard, o_shard = state_lib.setup(cfg, mesh, tx, ckpts)
    if data_state is not None:
        train_it.set_state(data_state)
        if rollouts:
            rollouts.set_state(data_state["rl"])
        log(f"resumed from {ckpts.directory}/{state.step}")
    n_params = metrics_lib.param_count(cfg.model)
    log(f"model: {n_params / 1e6:.2f}M params, mesh {dict(mesh.shape)}, {jax.device_count()} {jax.devices()[0].platform} devices")

    objective = objectives.for_task(graphdef, cfg)
    ref_params = state_lib.reference_params(cfg, mesh) if objectives.needs_reference(cfg) and not precomputed_reference(cfg) else None
    r_shard = p_shard if ref_params is not None else None
    batch_shard = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    # ppo/grpo steps also take the KL coefficient and the step number (host scalars).
    step_body, scalars = (steps_lib.rollout_step(graphdef, cfg, tx), (None, None)) if rollouts else (steps_lib.train_step(objective, tx, cfg.train), ())
    step_fn = jax.jit(
        step_body,
        in_shardings=(p_shard, o_shard, batch_shard, r_shard, *scalars),
        out_shardings=(p_shard, o_shard, None),
        donate_argnums=(0, 1),
    )
    eval_fn = jax.jit(steps_lib.eval_step(objective), in_shardings=(p_shard, batch_shard, r_shard))

    def to_global(batch: dict) -> dict:
        return {k: jax.make_array_from_process_local_data(batch_shard, np.asarray(v)) for k, v in batch.items()}

    writer = metrics_lib.MetricsWriter(run_dir, enabled=main)
    writer.truncate_after(state.step)
    flops_per_token = metrics_lib.train_flops_per_token(cfg.model, cfg.data.seq_len)
    peak = metrics_lib.peak_flops_per_device()
    preemption = _Preemption()
    losses: dict[int, float] = {}
    window: dict = {"tokens": 0.0, "time": 0.0, "data": 0.0, "means": {}}
    trained = [writer.last_value("tokens_trained", 0.0)]  # tokens that carried a loss, whole run
    consecutive_bad = skipped_updates = 0
    last_saved = state.step
    eval_loss = None
    pbar = tqdm(total=cfg.train.steps, initial=state.step, disable=not main, desc="train", unit="step", dynamic_ncols=True)

    def save(step: int) -> None:
        nonlocal last_saved
        data_state = train_it.get_state() | ({"rl": rollouts.get_state()} if rollouts else {})
        ckpts.save(step, state.params, cfg, state.opt_state, data_state)
        last_saved = step

    fetched_at = [time.perf_counter()]

    def finish(step: int, m: dict, t_data: float, extra: dict) -> None:
        """Consumes the metrics of `step` (waiting for it to finish): guards, logs, evals."""
        nonlocal consecutive_bad, skipped_updates, eval_loss
        m = {k: float(v) for k, v in jax.device_get(m).items()} | extra
        # Wall time between consecutive fetches: the step's compute finishes inside device_get.
        now = time.perf_counter()
        t_wall, fetched_at[0] = now - fetched_at[0], now
        if m["nonfinite"]:
            consecutive_bad += 1
            skipped_updates += 1
            if consecutive_bad >= cfg.train.max_consecutive_nonfinite:
                raise MaxlmError(
                    f"step {step}: {consecutive_bad} non-finite losses or gradients in a row "
                    f"(train.max_consecutive_nonfinite={cfg.train.max_consecutive_nonfinite}); lower train.learning_rate"
                )
        else:
            consecutive_bad = 0
        if rollouts:
            rollouts.observe(m)
        losses[step] = m["loss"]
        # m["tokens"] is already the global count: the step reduces over the whole mesh.
        window["tokens"] += m["tokens"]
        window["time"] += t_wall
        window["data"] += t_data - extra.get("generate_seconds", 0.0)
        window["generate"] = window.get("generate", 0.0) + extra.get("generate_seconds", 0.0)
        if cfg.task in ("pretrain", "sft"):
            trained[0] += m["count"]
        for k, v in m.items():
            if k not in ("tokens", "count", "nonfinite", "generate_seconds") and not (k == "z_loss" and not cfg.train.z_loss):
                window["means"].setdefault(k, []).append(v)
        record = None
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            tps = window["tokens"] / max(window["time"], 1e-9)
            means = {k: float(np.mean(v)) for k, v in window["means"].items()}
            record = {
                "step": step,
                "loss": means.pop("loss"),
                "learning_rate": float(lr_at(step - 1)),
                "grad_norm": means.pop("grad_norm"),
                **means,
                **({"tokens_trained": trained[0]} if cfg.task in ("pretrain", "sft") else {}),
                "tokens_per_second": tps,
                "mfu": (tps * flops_per_token / (peak * jax.device_count())) if peak else None,
                "data_wait_fraction": window["data"] / max(window["time"], 1e-9),
                "skipped_updates": skipped_updates,
                "skipped_records": int(getattr(train_it, "skipped_records", 0)),
                **({"generation_fraction": window["generate"] / max(window["time"], 1e-9)} if rollouts else {}),
            }
            window.update(tokens=0.0, time=0.0, data=0.0, generate=0.0, means={})
        if cfg.train.eval_every and (step % cfg.train.eval_every == 0 or step == cfg.train.steps) and (eval_batches or eval_rollouts):
            if eval_rollouts:
                held_out = eval_rollouts.evaluate(state.params, cfg.train.eval_steps * cfg.train.global_batch_size)
            else:
                held_out = evaluate(eval_fn, state.params, eval_batches, to_global, ref_params)
            eval_loss = held_out.get("loss")
            fetched_at[0] = time.perf_counter()  # eval time is not training throughput
            record = (record or {"step": step}) | {f"eval_{k}": v for k, v in held_out.items()}
        if record:
            writer.write(record)
            pbar.set_postfix(loss=f"{record.get('loss', m['loss']):.3f}", refresh=False)
        pbar.update(1)

    if state.step < cfg.train.steps:
        log("compiling the train step ...")
    pending = None
    with jax.set_mesh(mesh):
        if eval_rollouts and cfg.train.eval_every and state.step == 0:
            # The starting policy's held-out reward: the baseline every later eval_reward is read against.
            writer.write({"step": 0} | {f"eval_{k}": v for k, v in eval_rollouts.evaluate(state.params, cfg.train.eval_steps * cfg.train.global_batch_size).items()})
            fetched_at[0] = time.perf_counter()
        for step in range(state.step + 1, cfg.train.steps + 1):
            if preemption.requested:
                break
            t0 = time.perf_counter()
            local, extra = next(train_it), {}
            if rollouts:  # the batch is sampled from the current policy
                local, extra = rollouts(state.params, local, step)
            batch = to_global(local)
            t_data = time.perf_counter() - t0
            args = (np.float32(rollouts.kl.coef), np.int32(step)) if rollouts else ()
            state.params, state.opt_state, m = step_fn(state.params, state.opt_state, batch, ref_params, *args)
            state.step = step
            if pending:
                finish(*pending)
            pending = (step, m, t_data, extra)
            if rollouts:
                # The next rollouts need these params anyway, and the KL coefficient this step moves
                # must be in the checkpoint: nothing to gain from keeping the step in flight.
                finish(*pending)
                pending = None
            if step % cfg.checkpoint.interval_steps == 0:
                save(step)
        if pending:
            finish(*pending)
        if state.step != last_saved:
            save(state.step)
        ckpts.close()
    pbar.close()
    preemption.restore()
    writer.close()
    result = RunResult(run_dir, state.step, losses, eval_loss, preempted=preemption.requested)
    if preemption.requested:
        log(f"SIGTERM: saved step {state.step} to {ckpts.directory} and stopped; rerun the same command to resume")
        return result
    # The sampler is a collective: every process samples, process 0 writes.
    result.samples = write_samples(cfg, graphdef, state.params, tokenizer, run_dir, log, write=main)
    if main:
        plot = writer.plot_loss()
        if plot:
            log(f"loss curve: {plot}")
        if cfg.export.hf_dir:
            from maxlm.ckpt.hf import export_hf

            out = Path(cfg.export.hf_dir)
            result.hf_dir = export_hf(run_dir, out if out.is_absolute() else run_dir / out, overwrite=True)
            log(f"Hugging Face export: {result.hf_dir}")
    if jax.process_count() > 1:
        # Otherwise the other processes reach JAX's shutdown barrier first, and it times out
        # while process 0 is still exporting.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("maxlm: end of run")
    return result


def write_samples(cfg: Config, graphdef, params, tokenizer, run_dir: Path, log, write: bool = True) -> list[str]:
    """Returns the end-of-run samples (with `write`, also written to run_dir/samples.txt and logged)."""
    if not cfg.sample.prompts or cfg.task == "rm":
        return []
    from maxlm.infer.prompts import encode_prompts, until_stop
    from maxlm.infer.sampler import generate

    s = cfg.sample
    prompts, stops = encode_prompts(cfg, tokenizer, s.prompts)
    out = generate(
        graphdef, cfg.model, params, prompts, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
        stop_ids=stops, seed=cfg.train.seed,
    )
    joint = " -> " if cfg.task != "pretrain" else ""
    texts = [p + joint + tokenizer.decode(until_stop(row, stops)) for p, row in zip(s.prompts, out[:, -s.max_new_tokens:])]
    if write:
        (run_dir / "samples.txt").write_text("\n\n".join(texts) + "\n")
        log("samples:\n" + "\n".join(f"  > {t!r}" for t in texts))
    return texts
