"""Prompts to sampler ids and sampled ids back to text, the way a run of each task reads them.

Pretrain runs (and HF imports) read a prompt as plain text after BOS and stop at EOS; chat
runs (sft, dpo, ppo, grpo...) render it as a user message with the run's chat template up to
the assistant header and stop at the template's end-of-turn ids. Shared by the end-of-run
samples, `Pretrained.generate_text`, generation evals and RL rollouts.
"""

from __future__ import annotations

from collections.abc import Sequence

from maxlm.config import Config
from maxlm.data import chat
from maxlm.data.tokenizers import Tokenizer
from maxlm.tasks import TASKS

Messages = Sequence[dict[str, str]]


def prompt_text(prompt: str | Messages) -> str:
    """Returns a prompt as plain text: a string as it is, messages' contents a blank line apart."""
    return prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)


def encode_prompts(cfg: Config, tokenizer: Tokenizer, prompts: Sequence[str | Messages]) -> tuple[list[list[int]], list[int]]:
    """Returns (prompt ids for the sampler, stop ids) for a run of `cfg.task`."""
    if not TASKS[cfg.task].chat:
        bos = [tokenizer.bos_id] if cfg.data.add_bos and tokenizer.bos_id >= 0 else []
        stops = [tokenizer.eos_id] if tokenizer.eos_id >= 0 else []
        return [bos + tokenizer.encode(prompt_text(p)) for p in prompts], stops
    template = cfg.data.chat_template
    return [chat.encode_prompt(tokenizer, template, p) for p in prompts], chat.stop_ids(tokenizer, template)


def until_stop(ids: Sequence[int], stops: Sequence[int]) -> list[int]:
    """Returns the ids before the first stop id (all of them when none occurs)."""
    ids = [int(t) for t in ids]
    return ids[: min([ids.index(t) for t in stops if t in ids], default=len(ids))]
