"""RL rollouts: prompts in, sampled completions scored by a verifier or a reward model, a batch out.

One `Rollouts` per run holds the encoded prompts. Each step it samples `rl.group_size`
completions per prompt with the one sampler (seeded by run seed and step, so a resumed run
samples exactly what the uninterrupted one did), scores them and lays the rows out for
`step.rollout_step`:
  tokens, segment_ids, positions, loss_mask  [R, P + N]  (R = prompts x group_size; the prompt
      left-padded to P = rl.max_prompt_len, then N = rl.max_new_tokens completion slots;
      segment 1 on real tokens up to and including the stop token, loss_mask 1 on the completion)
  sample_logp [R, P + N] f32: the sampler's log-prob of each completion token, at the position
      that predicts it (as the step's old_logp), 0 elsewhere
  grpo: advantages [R] f32 (rl.advantage over the scores);  ppo: scores [R] f32;  grpo with
      rl.kl_in "reward": also scores [R] and trained [R] f32 (0 on dynamic sampling's padding
      groups), from which the step takes the advantages of score - KL to the reference
Scores are the verifier's (or reward model's), less DAPO's overlong punishment when
rl.overlong_buffer > 0. With rl.dynamic_sampling (DAPO) a group whose scores are all equal (its
advantages would all be 0) is dropped and further prompt batches are sampled, up to
rl.max_sampling_rounds, until every process has a full batch of informative groups; short of
that, dropped groups fill the batch with their loss_mask zeroed (they train nothing), so every
step has the same rows. Round k of step s is seeded by (seed, s, k); the prompt iterator's
position, checkpointed, says how many batches were used.
It also holds ppo's KL coefficient (fixed or adaptive), which a checkpoint saves with the data state.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils

from maxlm.config import Config, RLConfig
from maxlm.data import chat
from maxlm.data.pipeline import DataIterator
from maxlm.data.records import read_records
from maxlm.data.sources import train_sources
from maxlm.data.tokenizers import Tokenizer
from maxlm.errors import BadRecordError, MaxlmError
from maxlm.losses import rl
from maxlm.tasks.rl import verifiers
from maxlm.tasks.task import Services

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PromptSet:
    """Encoded prompts with their answers; a Grain data source of indices into them."""

    ids: list[list[int]]
    answers: list[str | None]
    skipped: int
    prompts: list = dataclasses.field(default_factory=list)  # as the records gave them, for a reward model's template

    def __len__(self) -> int:
        return len(self.ids)


def load_prompts(cfg: Config, tokenizer: Tokenizer, sources) -> PromptSet:
    """Returns the prompts of `sources` rendered with the chat template; too-long ones are errors or counted skips."""
    ids, answers, texts, skipped = [], [], [], 0
    for src in sources:
        records, bad = read_records(src.path, cfg.task, cfg.data.on_bad_record, rows=src.rows)
        skipped += bad
        for r in records:
            p = chat.encode_prompt(tokenizer, cfg.data.chat_template, r.prompt)
            if len(p) > cfg.rl.max_prompt_len:
                message = f"{r.where}: prompt is {len(p)} tokens, longer than rl.max_prompt_len={cfg.rl.max_prompt_len}"
                if cfg.data.on_bad_record == "error":
                    raise BadRecordError(message)
                skipped += 1
                continue
            ids.append(p)
            answers.append(r.answer)
            texts.append(r.prompt)
    if not ids:
        raise MaxlmError(f"task {cfg.task}: no usable prompts in {', '.join(s.path for s in sources)}")
    return PromptSet(ids, answers, skipped, texts)


def prompt_batches(cfg: Config, prompts: PromptSet, process_index: int, process_count: int) -> grain.IterDataset:
    """Returns endless batches of prompt indices (int [B] per process), shuffled and checkpointable: this
    process's block of each global batch, so the global batch does not depend on the process count."""
    per_process = cfg.train.global_batch_size // process_count
    ds = grain.MapDataset.range(len(prompts))
    if cfg.data.shuffle:
        ds = ds.shuffle(seed=cfg.train.seed)
    mine = slice(process_index * per_process, (process_index + 1) * per_process)
    return ds.repeat().batch(cfg.train.global_batch_size, drop_remainder=True).map(lambda ids: ids[mine]).to_iter_dataset()


@dataclasses.dataclass
class Sampled:
    """One round of a step's rollouts: training rows [R, S] (see `training_rows`), raw and shaped scores [R]."""

    rows: dict[str, np.ndarray]
    raw: np.ndarray  # the verifier's or reward model's
    scores: np.ndarray  # raw less the overlong punishment

    def informative(self, group_size: int) -> np.ndarray:
        """Returns [R / G] bool: the groups whose scores are not all equal."""
        return np.ptp(self.scores.reshape(-1, group_size), axis=1) > 0


class Rollouts:
    """Samples, scores and lays out one step's rollouts for the current params.

    value_head (ppo): the batch carries the raw `scores` for GAE; else (grpo) group `advantages`.
    """

    def __init__(self, cfg: Config, tokenizer: Tokenizer, graphdef, prompts: PromptSet, services: Services, value_head: bool):
        self.cfg, self.tokenizer, self.graphdef, self.prompts = cfg, tokenizer, graphdef, prompts
        self.generate, self.value_head = services.generate, value_head
        self.stops = chat.stop_ids(tokenizer, cfg.data.chat_template)
        if not self.stops:
            raise MaxlmError(f"data.chat_template {cfg.data.chat_template}: no stop token; rollouts could not end")
        self.verify = verifiers.verifier(cfg.rl.verifier)
        self.reward_model = _reward_model(services, cfg.rl.reward_model) if cfg.rl.reward_model else None
        r = cfg.rl
        self.kl = rl.AdaptiveKLController(r.kl_coef, r.kl_target, r.kl_horizon) if r.kl_target > 0 else rl.FixedKLController(r.kl_coef)
        if cfg.rl.max_prompt_len + cfg.rl.max_new_tokens > cfg.model.max_seq_len:
            raise MaxlmError(
                f"rl.max_prompt_len + rl.max_new_tokens = {cfg.rl.max_prompt_len + cfg.rl.max_new_tokens} exceeds model.max_seq_len {cfg.model.max_seq_len}"
            )

    def sample(self, params, indices, seed: int, group_size: int, temperature: float,
               batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
        """Returns (token rows [R, P + N], prompt lengths [R], completion texts [R], rewards [R], the sampler's
        log-probs of the new tokens [R, N]), `group_size` per prompt, sampled `batch_size` rows at a time (None: all at once)."""
        r = self.cfg.rl
        idx = [int(i) for i in indices for _ in range(group_size)]
        out = self.generate(
            self.graphdef, self.cfg.model, params, self.tokenizer, [self.prompts.ids[i] for i in idx], r.max_new_tokens,
            stop_ids=self.stops, prompt_len=r.max_prompt_len, seed=seed, temperature=temperature, top_k=r.top_k, top_p=r.top_p,
            batch_size=batch_size, group=group_size,
        )
        rows, texts = out.rows_NxTM, out.texts
        if self.reward_model:
            # A prompt too long for the reward model is cut from the left, as its training read pairs.
            scores, tokens, _ = self.reward_model.reply_rewards([self.prompts.prompts[i] for i in idx], texts)
            if np.any(tokens > self.reward_model.max_len):
                raise MaxlmError(f"rl.reward_model {self.reward_model.name}: a rollout's reply is {tokens.max()} tokens in its chat "
                                 f"template with its prompt cut, more than its model.max_seq_len {self.reward_model.max_len}; "
                                 "lower rl.max_new_tokens")
            scores = scores.astype(np.float32)
        else:
            answers = [self.prompts.answers[i] for i in idx]
            scores = np.asarray([self.verify(t, a) if a is not None else 0.0 for t, a in zip(texts, answers)], np.float32)
        lens = np.asarray([len(self.prompts.ids[i]) for i in idx])
        return rows, lens, texts, scores, out.logp_NxM

    def sample_round(self, params, indices, seed: int) -> Sampled:
        """Returns the training rows and scores of `rl.group_size` sampled completions for each prompt of `indices`."""
        r = self.cfg.rl
        rows, lens, _, raw, logp = self.sample(params, indices, seed, r.group_size, r.temperature)
        batch = training_rows(rows, lens, r.max_prompt_len, self.stops)
        batch["sample_logp"] = sample_logps(logp, batch["loss_mask"], r.max_prompt_len)
        penalty = rl.overlong_penalty(batch["loss_mask"].sum(axis=1), r.max_new_tokens, r.overlong_buffer, r.overlong_penalty)
        return Sampled(batch, raw, raw - np.asarray(penalty, np.float32) if r.overlong_buffer else raw)

    def rounds(self, params, prompts, step: int) -> list[Sampled]:
        """Returns the step's sampled rounds: one, or (rl.dynamic_sampling) up to rl.max_sampling_rounds,
        until every process holds a batch's worth of informative groups."""
        r = self.cfg.rl
        out: list[Sampled] = []
        for k in range(r.max_sampling_rounds if r.dynamic_sampling else 1):
            # Round 0 keeps the seed of a run without dynamic sampling.
            seed = int(np.random.SeedSequence([self.cfg.train.seed, step] + ([k] if k else [])).generate_state(1)[0])
            out.append(self.sample_round(params, next(prompts), seed))
            kept = sum(int(s.informative(r.group_size).sum()) for s in out)
            # Every process samples in every round (the sampler is one program over the mesh): stop together.
            if r.dynamic_sampling and fewest_over_processes(kept) * r.group_size >= len(out[0].raw):
                break
        return out

    def __call__(self, params, prompts, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Returns (the step's rollout batch, rollout metrics), its prompts drawn from the index batches of `prompts`."""
        r = self.cfg.rl
        t0 = time.perf_counter()
        sampled = self.rounds(params, prompts, step)
        seconds = time.perf_counter() - t0
        batch, scores, trained = select_groups(sampled, r.group_size) if r.dynamic_sampling else (
            dict(sampled[0].rows), sampled[0].scores, np.ones_like(sampled[0].scores))
        if self.value_head:
            batch["scores"] = scores
        else:
            batch["advantages"] = advantages(r, scores, trained)
            if r.kl_in == "reward":
                # The step takes the KL to the reference off the scores, then runs rl.advantage on them again.
                batch |= {"scores": scores, "trained": trained}
        raw = np.concatenate([s.raw for s in sampled])
        completion = np.concatenate([s.rows["loss_mask"].sum(axis=1) for s in sampled])
        mean, mean_sq, tokens = across_processes([raw, np.square(raw), completion])
        metrics = {
            "reward_mean": mean,  # over every completion sampled this step, before any shaping
            "reward_std": float(np.sqrt(max(mean_sq - mean * mean, 0.0))),
            "completion_tokens": tokens,
            "generate_seconds": seconds,
        }
        if r.overlong_buffer:
            metrics["overlong_penalty"] = across_processes([np.concatenate([s.raw - s.scores for s in sampled])])[0]
        if r.dynamic_sampling:
            informative = np.concatenate([s.informative(r.group_size) for s in sampled])
            dropped, padded = across_processes([~informative, trained[:: r.group_size] == 0])
            prompts_per_round = self.cfg.train.global_batch_size
            metrics |= {"dropped_groups": round(dropped * len(sampled) * prompts_per_round),
                        "padded_groups": round(padded * prompts_per_round), "sampling_rounds": len(sampled)}
        if r.kl_in == "reward":
            metrics["kl_coef"] = self.kl.coef
        return batch, metrics

    def observe(self, metrics: dict) -> None:
        """Moves the KL coefficient after a finished step (a no-op unless rl.kl_target > 0)."""
        if "kl_sequence" in metrics:
            rows = self.cfg.train.global_batch_size * self.cfg.rl.group_size
            self.kl = dataclasses.replace(self.kl, coef=self.kl.update(metrics["kl_sequence"], rows))

    def get_state(self) -> dict:
        """Returns what a checkpoint must keep beyond the prompt iterator: the KL coefficient."""
        return {"kl_coef": self.kl.coef}

    def set_state(self, state: dict) -> None:
        """Restores `get_state`'s KL coefficient."""
        self.kl = dataclasses.replace(self.kl, coef=float(state["kl_coef"]))

    def evaluate(self, params) -> dict[str, float]:
        """Returns {"reward": mean greedy reward} over every held-out prompt (one completion each).

        The same measurement as `maxlm eval exact-match` with the run's verifier and
        rl.max_new_tokens: all records of data.eval_files (a fixed subset is chosen with their
        `rows`), the same chat template, greedy decoding. Sampled one rollout batch of rows at a
        time; several processes split the prompts, each padding its share to the same count with
        a repeat that counts nothing, since every process must sample the same number of rows.
        """
        n = len(self.prompts)
        mine = list(range(n))[jax.process_index()::jax.process_count()]
        share = -(-n // jax.process_count())
        rows = min(share, self.cfg.train.global_batch_size * self.cfg.rl.group_size // jax.process_count())
        scores = self.sample(params, mine + [0] * (share - len(mine)), 0, 1, 0.0, batch_size=rows)[3]
        return {"reward": across_processes([scores[: len(mine)]])[0]}


def across_processes(values: list[np.ndarray]) -> list[float]:
    """Returns the mean of each array over the rows of every process (this process's alone when it runs alone)."""
    sums = np.asarray([[float(np.sum(v)), float(np.size(v))] for v in values], np.float64)
    if jax.process_count() > 1:
        sums = np.asarray(multihost_utils.process_allgather(sums.astype(np.float32))).reshape(-1, len(values), 2).sum(axis=0)
    return [float(s / max(c, 1.0)) for s, c in sums]


def select_groups(sampled: list[Sampled], group_size: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Returns (rows [R, S], scores [R], trained [R] f32 0/1) of R = the first round's rows: its count of
    informative groups taken in sampling order over the rounds, then, when there are too few, dropped
    groups with their loss_mask zeroed (trained 0), so the batch keeps its shape. Every key of the rows
    (sample_logp too) is taken row for row, so it stays aligned with its tokens."""
    need = len(sampled[0].raw) // group_size
    informative = np.concatenate([s.informative(group_size) for s in sampled])
    order = np.concatenate([np.flatnonzero(informative), np.flatnonzero(~informative)])[:need]
    row_idx = (order[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)
    rows = {k: np.concatenate([s.rows[k] for s in sampled])[row_idx] for k in sampled[0].rows}
    trained = np.repeat(informative[order], group_size).astype(np.float32)
    rows["loss_mask"] = rows["loss_mask"] * trained[:, None]
    return rows, np.concatenate([s.scores for s in sampled])[row_idx], trained


def advantages(r: RLConfig, scores: np.ndarray, trained: np.ndarray) -> np.ndarray:
    """Returns rl.advantage's advantages [R] f32 for this process's rows, from the trained rows of every
    process (a batch std is over the global batch); 0 on rows not trained."""
    all_scores, all_trained = global_rows(scores), global_rows(trained) > 0
    out = np.zeros(all_scores.shape, np.float32)
    if all_trained.any():
        out[all_trained] = np.asarray(rl.group_advantages(all_scores[all_trained], r.group_size, r.advantage, r.scale_rewards))
    n = len(scores)
    return out[jax.process_index() * n : (jax.process_index() + 1) * n]


def rollout_layout(cfg: Config, value_head: bool) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Returns {key: (shape, dtype)} of one step's global rollout batch as `Rollouts.__call__` lays it out (module docstring)."""
    r = cfg.rl
    rows, cols = cfg.train.global_batch_size * r.group_size, r.max_prompt_len + r.max_new_tokens
    i32, f32 = np.dtype(np.int32), np.dtype(np.float32)
    layout = {"tokens": ((rows, cols), i32), "segment_ids": ((rows, cols), i32), "positions": ((rows, cols), i32),
              "loss_mask": ((rows, cols), f32), "sample_logp": ((rows, cols), f32)}
    if value_head:
        return layout | {"scores": ((rows,), f32)}
    layout["advantages"] = ((rows,), f32)
    return layout | ({"scores": ((rows,), f32), "trained": ((rows,), f32)} if r.kl_in == "reward" else {})


def global_rows(x: np.ndarray) -> np.ndarray:
    """Returns the rows of `x` of every process, in process order (`x` itself when one process runs)."""
    if jax.process_count() == 1:
        return x
    return np.asarray(multihost_utils.process_allgather(x)).reshape(-1, *x.shape[1:])


def fewest_over_processes(n: int) -> int:
    """Returns the smallest of every process's `n` (`n` itself when one process runs)."""
    if jax.process_count() == 1:
        return n
    return int(np.min(multihost_utils.process_allgather(np.int32(n))))


def training_rows(rows: np.ndarray, prompt_lens: np.ndarray, prompt_len: int, stops: list[int]) -> dict[str, np.ndarray]:
    """Returns the [R, S] training rows of sampled `rows`: prompts left-padded to `prompt_len`, then completions.

    A completion runs up to and including its first stop token (all N slots when it has none);
    segment 1 covers the prompt's real tokens and the completion, positions count from the
    prompt's first real token, exactly as the sampler placed them.
    """
    r, s = rows.shape
    n = s - prompt_len
    is_stop = np.isin(rows[:, prompt_len:], stops)
    length = np.where(is_stop.any(axis=1), is_stop.argmax(axis=1) + 1, n)
    cols = np.arange(s)[None, :]
    in_prompt = cols >= (prompt_len - prompt_lens)[:, None]
    in_prompt &= cols < prompt_len
    in_completion = (cols >= prompt_len) & (cols < prompt_len + length[:, None])
    valid = in_prompt | in_completion
    positions = np.where(valid, np.cumsum(valid, axis=1) - 1, 0)
    return {
        "tokens": np.where(valid, rows, 0).astype(np.int32),
        "segment_ids": valid.astype(np.int32),
        "positions": positions.astype(np.int32),
        "loss_mask": in_completion.astype(np.float32),
    }


def sample_logps(logp_RxN: np.ndarray, loss_mask_RxS: np.ndarray, prompt_len: int) -> np.ndarray:
    """Returns [R, S] f32: the sampler's log-prob of each completion token at the position that predicts it
    (column prompt_len - 1 + j for new token j, as old_logp is laid out), 0 off the completion."""
    out = np.zeros(loss_mask_RxS.shape, np.float32)
    n = logp_RxN.shape[1]
    out[:, prompt_len - 1 : prompt_len - 1 + n] = logp_RxN * loss_mask_RxS[:, prompt_len : prompt_len + n]
    return out


def _reward_model(services: Services, path: str):
    """Returns the reward model of rl.reward_model (a `task: rm` run), scoring in its own tokenizer and chat template."""
    try:
        return services.reward_model(path)
    except MaxlmError as e:
        raise MaxlmError(f"rl.reward_model {e}") from None


def make_rollouts(cfg: Config, tokenizer: Tokenizer, graphdef, services: Services, value_head: bool) -> tuple[Rollouts, DataIterator]:
    """Returns (the run's Rollouts, the checkpointable iterator of its prompt-index batches)."""
    prompts = load_prompts(cfg, tokenizer, train_sources(cfg.data))
    # The position is global (every process's is the same), but an RL run resumes only with the process count it
    # was saved with: that its rollouts do not depend on the count is not established.
    position_keys = {"task": cfg.task, "prompts": len(prompts), "rows": cfg.train.global_batch_size, "shuffle": cfg.data.shuffle,
                     "process_count": jax.process_count()}
    batches = prompt_batches(cfg, prompts, jax.process_index(), jax.process_count())
    return Rollouts(cfg, tokenizer, graphdef, prompts, services, value_head), DataIterator(batches, [prompts], position_keys)


def make_eval_rollouts(cfg: Config, tokenizer: Tokenizer, graphdef, services: Services, value_head: bool) -> Rollouts | None:
    """Returns Rollouts over data.eval_files for held-out greedy reward, or None without them."""
    if not cfg.data.eval_files:
        return None
    return Rollouts(cfg, tokenizer, graphdef, load_prompts(cfg, tokenizer, cfg.data.eval_files), services, value_head)
