"""Completion functions: prompts in, completion texts out. The synth pipelines see only this
interface, so any text source (a maxlm model, a scripted list in a test) drives them.

A prompt is a string or a conversation (a list of `{"role", "content"}` messages).
`ModelCompleter` wires a loaded maxlm model to it through the one sampler
(`Pretrained.generate_batched`): strings are raw text to continue unless a chat template is named,
conversations are rendered with `maxlm.data.chat` up to the assistant header.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from maxlm.data import chat
from maxlm.errors import MaxlmError

if TYPE_CHECKING:  # jax loads with the model, not with the scripted completions of the synth pipelines
    from maxlm.infer.pretrained import Pretrained

Message = dict[str, str]
Prompt = str | Sequence[Message]
Complete = Callable[[list[Prompt]], list[str]]


class Completion(str):
    """A completion's text; `.truncated` is True when it ran out of new tokens before any stop."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False):
        self = super().__new__(cls, text)
        self.truncated = truncated
        return self


def was_truncated(text: str) -> bool:
    """Returns whether a completion was cut off by the token budget (plain strings never are)."""
    return bool(getattr(text, "truncated", False))


def cut_at_stops(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Returns (text before the earliest stop string, whether one was found)."""
    at = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


class ModelCompleter:
    """A maxlm model as a completion function: batches, per-call seeds, stop ids and stop strings."""

    def __init__(
        self,
        model: Pretrained,
        *,
        template: str | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_k: int = 0,
        top_p: float = 1.0,
        batch_size: int = 8,
        seed: int = 0,
        stop: Sequence[str] = (),
    ):
        if batch_size < 1 or max_new_tokens < 1:
            raise MaxlmError(f"--batch-size and --max-new-tokens must be >= 1, got {batch_size} and {max_new_tokens}")
        if template is not None and template not in chat.TEMPLATE_NAMES:
            raise MaxlmError(f"chat template must be one of {', '.join(chat.TEMPLATE_NAMES)}, got {template!r}")
        self.model, self.template, self.batch_size, self.seed = model, template, batch_size, seed
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.max_new_tokens = max_new_tokens
        tok = model.tokenizer
        self.stop_ids = chat.stop_ids(tok, template) if template else ([tok.eos_id] if tok.eos_id >= 0 else [])
        end = chat.TEMPLATES[template].end if template in chat.TEMPLATES else ""
        # An end-of-turn marker that is several tokens of this vocabulary can only be seen in the text.
        text_end = [end] if end and not isinstance(end, chat.Special) and len(tok.encode(end)) > 1 else []
        self.stop = [*stop, *text_end]

    def encode(self, prompt: Prompt) -> list[int]:
        """Returns the token ids the sampler continues for one prompt."""
        if self.template is not None:
            return chat.encode_prompt(self.model.tokenizer, self.template, prompt)
        if not isinstance(prompt, str):
            raise MaxlmError("a conversation prompt needs a chat template (--chat-template default, llama3, chatml or hf)")
        return self.model.encode_text(prompt)

    def __call__(self, prompts: list[Prompt]) -> list[Completion]:
        """Returns one completion per prompt, in order."""
        ids = [self.encode(p) for p in prompts]
        longest, room = max(map(len, ids)), self.model.config.model.max_seq_len
        new = min(self.max_new_tokens, room - longest)
        if new < 1:
            raise MaxlmError(
                f"a prompt of {longest} tokens leaves no room for new tokens in model.max_seq_len={room}; "
                "shorten the prompts (self-instruct: fewer --prompt-seeds)"
            )
        # Prompt length rounded up to a multiple of 64 (within the context): a few compiled shapes, not one per call.
        pad_to = min(-(-longest // 64) * 64, room - new)
        done = self.model.generate_batched(ids, new, stop_ids=self.stop_ids, batch_size=self.batch_size, prompt_len=pad_to,
                                           seed=self._batch_seed, **self.sampling)
        texts = []
        for text, stopped_by_id in zip(done.texts, done.stopped):
            text, stopped = cut_at_stops(text, self.stop)
            texts.append(Completion(text, truncated=not stopped_by_id and not stopped))
        return texts

    def _batch_seed(self, batch: list[list[int]]) -> int:
        # The seed follows the prompts, not the call count, so a resumed run samples what an
        # uninterrupted one would have for the same batch.
        return zlib.crc32(np.asarray([self.seed, *(t for row in batch for t in row)], np.int64).tobytes())
