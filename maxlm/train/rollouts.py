"""RL rollouts: prompts in, sampled completions scored by a verifier, a training batch out.

One `Rollouts` per run holds the encoded prompts. Each step it samples `rl.group_size`
completions per prompt with the one sampler (seeded by run seed and step, so a resumed run
samples exactly what the uninterrupted one did), scores them, turns the scores into
group-normalized advantages and lays the rows out for `objectives.policy_gradient`:
  tokens, segment_ids, positions, loss_mask  [R, P + N]  (R = prompts x group_size; the prompt
      left-padded to P = rl.max_prompt_len, then N = rl.max_new_tokens completion slots;
      segment 1 on real tokens up to and including the stop token, loss_mask 1 on the completion)
  advantages  [R] f32
"""

from __future__ import annotations

import dataclasses
import logging
import time

import grain
import numpy as np

from maxlm.config import Config
from maxlm.data import chat
from maxlm.data.records import Prompt, RecordFile
from maxlm.data.sources import expand, row_slice
from maxlm.data.tokenizers import Tokenizer
from maxlm.errors import MaxlmError
from maxlm.infer.sampler import generate
from maxlm.train import rewards

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PromptSet:
    """Encoded prompts with their answers; a Grain data source of indices into them."""

    ids: list[list[int]]
    answers: list[str | None]
    skipped: int

    def __len__(self) -> int:
        return len(self.ids)


def load_prompts(cfg: Config, tokenizer: Tokenizer, sources) -> PromptSet:
    """Returns the prompts of `sources` rendered with the chat template; too-long ones are errors or counted skips."""
    ids, answers, skipped = [], [], 0
    for src in sources:
        records: list[Prompt] = []
        for f in expand(src.path):
            reader = RecordFile(f, cfg.task, cfg.data.on_bad_record)
            skipped += reader.skipped
            records += reader.records
        for r in records[row_slice(src.rows, len(records), src.path)]:
            p = chat.encode_prompt(tokenizer, cfg.data.chat_template, r.prompt)
            if len(p) > cfg.rl.max_prompt_len:
                message = f"{r.where}: prompt is {len(p)} tokens, longer than rl.max_prompt_len={cfg.rl.max_prompt_len}"
                if cfg.data.on_bad_record == "error":
                    raise MaxlmError(message + "  (set data.on_bad_record=skip to drop such records)")
                skipped += 1
                continue
            ids.append(p)
            answers.append(r.answer)
    if not ids:
        raise MaxlmError(f"task {cfg.task}: no usable prompts in {', '.join(s.path for s in sources)}")
    return PromptSet(ids, answers, skipped)


def prompt_batches(cfg: Config, prompts: PromptSet, process_index: int, process_count: int) -> grain.IterDataset:
    """Returns endless batches of prompt indices (int [B] per process), shuffled and checkpointable."""
    per_process = cfg.train.global_batch_size // process_count
    ds = grain.MapDataset.range(len(prompts))[process_index::process_count]
    if cfg.data.shuffle:
        ds = ds.shuffle(seed=cfg.train.seed)
    return ds.repeat().batch(per_process, drop_remainder=True).to_iter_dataset()


class Rollouts:
    """Samples, scores and lays out one step's rollouts for the current params."""

    def __init__(self, cfg: Config, tokenizer: Tokenizer, graphdef, prompts: PromptSet):
        self.cfg, self.tokenizer, self.graphdef, self.prompts = cfg, tokenizer, graphdef, prompts
        self.stops = chat.stop_ids(tokenizer, cfg.data.chat_template)
        if not self.stops:
            raise MaxlmError(f"data.chat_template {cfg.data.chat_template}: no stop token; rollouts could not end")
        self.verify = rewards.verifier(cfg.rl.verifier)
        if cfg.rl.max_prompt_len + cfg.rl.max_new_tokens > cfg.model.max_seq_len:
            raise MaxlmError(
                f"rl.max_prompt_len + rl.max_new_tokens = {cfg.rl.max_prompt_len + cfg.rl.max_new_tokens} exceeds model.max_seq_len {cfg.model.max_seq_len}"
            )

    def sample(self, params, indices, seed: int, group_size: int, temperature: float) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """Returns (token rows [R, P + N], prompt lengths [R], completion texts [R], rewards [R]), `group_size` per prompt."""
        r = self.cfg.rl
        idx = [int(i) for i in indices for _ in range(group_size)]
        rows = generate(
            self.graphdef, self.cfg.model, params, [self.prompts.ids[i] for i in idx], r.max_new_tokens,
            temperature=temperature, top_k=r.top_k, top_p=r.top_p, stop_ids=self.stops, pad_id=self.tokenizer.pad_id,
            seed=seed, pad_to=r.max_prompt_len,
        )
        texts, scores = [], []
        for i, row in zip(idx, rows[:, r.max_prompt_len:].tolist()):
            cut = min([row.index(t) for t in self.stops if t in row], default=len(row))
            texts.append(self.tokenizer.decode(row[:cut]))
            answer = self.prompts.answers[i]
            scores.append(self.verify(texts[-1], answer) if answer is not None else 0.0)
        lens = np.asarray([len(self.prompts.ids[i]) for i in idx])
        return rows, lens, texts, np.asarray(scores, np.float32)

    def __call__(self, params, indices, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Returns (the step's training batch, rollout metrics) for prompt `indices`."""
        from maxlm.train.rl import group_advantages

        r = self.cfg.rl
        t0 = time.perf_counter()
        seed = int(np.random.SeedSequence([self.cfg.train.seed, step]).generate_state(1)[0])
        rows, lens, texts, scores = self.sample(params, indices, seed, r.group_size, r.temperature)
        seconds = time.perf_counter() - t0
        batch = layout(rows, lens, r.max_prompt_len, self.stops)
        batch["advantages"] = np.asarray(group_advantages(scores, r.group_size), np.float32)
        completion = batch["loss_mask"].sum(axis=1)
        metrics = {
            "reward_mean": float(scores.mean()),
            "reward_std": float(scores.std()),
            "completion_tokens": float(completion.mean()),
            "generate_seconds": seconds,
        }
        return batch, metrics

    def evaluate(self, params, n: int) -> dict[str, float]:
        """Returns {"reward": mean greedy reward} over the first `n` prompts (one completion each)."""
        n = min(n, len(self.prompts))
        _, _, _, scores = self.sample(params, range(n), 0, 1, 0.0)
        return {"reward": float(scores.mean())}


def layout(rows: np.ndarray, prompt_lens: np.ndarray, prompt_len: int, stops: list[int]) -> dict[str, np.ndarray]:
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


def make_rollouts(cfg: Config, tokenizer: Tokenizer, graphdef) -> tuple[Rollouts, "DataIterator"]:
    """Returns (the run's Rollouts, the checkpointable iterator of its prompt-index batches)."""
    import jax

    from maxlm.data.pipeline import DataIterator
    from maxlm.data.sources import train_sources

    if jax.process_count() > 1:
        raise MaxlmError("task: grpo runs in one process for now (rollouts are sampled on the host's own prompt batch)")
    prompts = load_prompts(cfg, tokenizer, train_sources(cfg.data))
    layout_ = {"task": cfg.task, "prompts": len(prompts), "rows": cfg.train.global_batch_size, "shuffle": cfg.data.shuffle}
    return Rollouts(cfg, tokenizer, graphdef, prompts), DataIterator(prompt_batches(cfg, prompts, 0, 1), [prompts], layout_)


def make_eval_rollouts(cfg: Config, tokenizer: Tokenizer, graphdef) -> Rollouts | None:
    """Returns Rollouts over data.eval_files for held-out greedy reward, or None without them."""
    if not cfg.data.eval_files:
        return None
    return Rollouts(cfg, tokenizer, graphdef, load_prompts(cfg, tokenizer, cfg.data.eval_files))
