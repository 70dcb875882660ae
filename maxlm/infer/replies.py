"""A model with its tokenizer and chat template, scoring replies to prompts: log-probs and rewards.

Replies are scored the way SFT and reward-model training read them: the conversation rendered
with the chat template (`maxlm.data.chat.encode_completion`), the mask on the reply's tokens and
its end-of-turn marker. Used by data selection (perplexity, IFD, disagreement, reward filtering)
and by ppo/grpo runs that score rollouts with a trained reward model (`rl.reward_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maxlm.data import chat
from maxlm.data.tokenizers import Tokenizer
from maxlm.errors import MaxlmError
from maxlm.infer.pretrained import Pretrained, from_pretrained
from maxlm.infer.scoring import Scorer
from maxlm.tasks import require_reward_model

Message = dict[str, str]


@dataclass
class ScoringModel:
    """A loaded model with the scorer and the chat template that scoring text uses; `name` is the path it came from."""

    name: str
    scorer: Scorer
    template: str

    @property
    def model(self) -> Pretrained:
        """Returns the loaded model the scorer scores with."""
        return self.scorer.model

    @property
    def tokenizer(self) -> Tokenizer:
        """Returns the model's tokenizer."""
        return self.model.tokenizer

    @property
    def max_len(self) -> int:
        """Returns the longest sequence the model scores (model.max_seq_len)."""
        return self.scorer.max_len

    def encode_reply(self, prompt: Sequence[Message], reply: str) -> tuple[list[int], list[int]]:
        """Returns (ids, mask) of prompt + reply rendered with the template; mask 1 on the reply."""
        return chat.encode_completion(self.tokenizer, self.template, list(prompt), reply)

    def reply_logprobs(self, prompts: Sequence[Sequence[Message]], replies: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (summed log p [N], scored tokens [N], truncated [N] bool) of each reply given its prompt.

        A conversation longer than model.max_seq_len is cut at the end: only the reply tokens
        that fit are scored.
        """
        rows = [fit(*self.encode_reply(p, r), self.max_len) for p, r in zip(prompts, replies)]
        total, count = self.scorer.logprobs([ids for ids, _, _ in rows], [m for _, m, _ in rows])
        return total, count, np.asarray([t for _, _, t in rows], bool)

    def reply_rewards(self, prompts: Sequence[Sequence[Message]], replies: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (reward [N] f64, tokens [N] int64, truncated [N] bool) of each rendered conversation.

        A conversation longer than model.max_seq_len is read as reward training reads pairs
        (data.pair_truncation=left): its prompt loses its earliest text (`chat.fit_prompt`) and the
        reply stays whole, so the reward is still read over the whole reply. `tokens` counts the
        scored conversation; the reward is NaN where the reply alone does not fit (tokens > max_len).
        """
        require_reward_model(self.scorer.model.config, self.name)
        fitted = [chat.fit_prompt(self.tokenizer, self.template, p, [r], self.max_len) for p, r in zip(prompts, replies)]
        encoded = [self.encode_reply(p, r) for (p, _), r in zip(fitted, replies)]
        tokens = np.asarray([len(ids) for ids, _ in encoded], np.int64)
        reward = np.full(len(encoded), np.nan)
        fits = np.flatnonzero(tokens <= self.max_len)
        if fits.size:
            reward[fits] = self.scorer.rewards([encoded[i][0] for i in fits], [encoded[i][1] for i in fits])
        return reward, tokens, np.asarray([cut for _, cut in fitted], bool)


def fit(ids: list[int], mask: list[int], max_len: int) -> tuple[list[int], list[int], bool]:
    """Returns (ids, mask, truncated): cut at max_len tokens."""
    return (ids[:max_len], mask[:max_len], True) if len(ids) > max_len else (ids, mask, False)


def load_scoring_model(path: str, template: str | None = None, batch_tokens: int = 16384, mesh=None, reward: bool = False) -> ScoringModel:
    """Returns the model at `path` (maxlm run / checkpoint or HF dir) ready to score; template defaults to its run's.

    reward=True: the model must be a reward model (a `task: rm` run's scalar head; a ppo run's
    value head is not one).
    """
    model = from_pretrained(path, mesh=mesh)
    if reward:
        require_reward_model(model.config, path)
    model.tokenizer  # no tokenizer files: the one error, before any scoring
    template = template or model.template
    if template not in chat.TEMPLATE_NAMES:
        raise MaxlmError(f"chat template must be one of {', '.join(chat.TEMPLATE_NAMES)}, got {template!r}")
    return ScoringModel(path, Scorer(model, batch_tokens), template)
