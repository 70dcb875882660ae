"""A loaded model that works on token ids and on text: `maxlm.from_pretrained(path)`, from a maxlm run,
checkpoints dir or step dir, or straight from a Hugging Face Llama / Qwen2 / Qwen3 / Mistral / Gemma 2 / Gemma 3 model dir.

It holds params, graphdef, mesh, config, the tokenizer (loaded once, at its first use) and the
chat template, and reads text the way the run trained on it: the one plain-text rule (BOS when
the run adds BOS and the tokenizer has one) and the one prompt rule (pretrain runs and HF
imports: plain text, stop at EOS; chat runs: a user message in the run's template up to the
assistant header, stop at its end-of-turn ids).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from maxlm.ckpt.hf import read_hf
from maxlm.ckpt.adapters import restore_plain
from maxlm.ckpt.step import StoredStep
from maxlm.ckpt.hf_tokenizer import has_hf_tokenizer
from maxlm.config import ComputeDtype, Config, MeshConfig, choices
from maxlm.data import chat
from maxlm.data.tokenizers import Tokenizer, encode_text, load_tokenizer
from maxlm.errors import MaxlmError
from maxlm.infer import sampler
from maxlm.infer.generate import Generation, generate_batched
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh
from maxlm.tasks import TASKS

Messages = Sequence[dict[str, str]]


def prompt_text(prompt: str | Messages) -> str:
    """Returns a prompt as plain text: a string as it is, messages' contents a blank line apart."""
    return prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)


@dataclasses.dataclass(eq=False)
class Pretrained:
    """A loaded model: `.config`, `.params`, `.graphdef`, `.mesh`, `.tokenizer`, `.template`; call it on token ids.

    `tokenizer_or_path` is a Tokenizer, the path of one (loaded at its first use), or None: then
    the first use of text raises the one "has no tokenizer files" error. `name` names the model in errors.
    """

    config: Config
    params: Any
    graphdef: nnx.GraphDef
    tokenizer_or_path: Tokenizer | str | os.PathLike | None
    mesh: Mesh
    name: str = "this model"

    def __post_init__(self):
        graphdef = self.graphdef
        # One jitted function for every call: it compiles once per (batch, length) shape.
        self._forward = jax.jit(lambda params, tokens: params_lib.bind(graphdef, params)(tokens))

    @property
    def tokenizer(self) -> Tokenizer:
        """Returns the model's tokenizer; MaxlmError when the model came without tokenizer files."""
        if self.tokenizer_or_path is None:
            raise MaxlmError(
                f"{self.name}: has no tokenizer files; text in or out needs them (a maxlm run's tokenizer.path, or the "
                "tokenizer files of a Hugging Face dir); token ids work without: call the model or generate() on ids"
            )
        if isinstance(self.tokenizer_or_path, (str, os.PathLike)):
            self.tokenizer_or_path = load_tokenizer(self.tokenizer_or_path)  # once: later uses get the object
        return self.tokenizer_or_path

    @property
    def template(self) -> str:
        """Returns the chat template the run trained with (data.chat_template)."""
        return self.config.data.chat_template

    def __call__(self, tokens_BxT) -> jax.Array:
        """Returns f32 logits [B, T, V] for int token ids [B, T]."""
        with jax.set_mesh(self.mesh):
            return self._forward(self.params, jnp.asarray(tokens_BxT, jnp.int32))

    def generate(self, prompt_tokens, max_new_tokens: int, temperature: float = 0.0, **kw) -> np.ndarray:
        """Returns int32 [B, T + N]: the (left-padded) prompts, then N new tokens per row."""
        with jax.set_mesh(self.mesh):
            return sampler.generate(self.graphdef, self.config.model, self.params, prompt_tokens, max_new_tokens, temperature=temperature, **kw)

    def encode_text(self, text: str, document: bool = False) -> list[int]:
        """Returns the ids of plain text: BOS first per data.add_bos; a `document` also ends in EOS per data.add_eos, as training reads it."""
        d = self.config.data
        return encode_text(self.tokenizer, text, d.add_bos, document and d.add_eos)

    def encode_prompts(self, prompts: Sequence[str | Messages]) -> tuple[list[list[int]], list[int]]:
        """Returns (the sampler ids of each prompt, the stop ids), read as a run of `config.task` reads them."""
        tok = self.tokenizer
        if not TASKS[self.config.task].chat:
            return [self.encode_text(prompt_text(p)) for p in prompts], [tok.eos_id] if tok.eos_id >= 0 else []
        return [chat.encode_prompt(tok, self.template, p) for p in prompts], chat.stop_ids(tok, self.template)

    def generate_batched(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, **kw) -> Generation:
        """Returns the batched generation of prompt ids under the model's mesh (`maxlm.infer.generate.generate_batched`'s keywords)."""
        with jax.set_mesh(self.mesh):
            return generate_batched(self.graphdef, self.config.model, self.params, self.tokenizer, prompts, max_new_tokens, **kw)

    def generate_text(self, prompts: list[str], max_new_tokens: int, **kw) -> list[str]:
        """Returns each prompt followed by its sampled continuation (chat runs: the reply to it as a user message)."""
        ids, stops = self.encode_prompts(prompts)
        out = self.generate_batched(ids, max_new_tokens, stop_ids=stops, **kw)
        return [p + text for p, text in zip(prompts, out.texts)]


def is_hf_dir(path: Path) -> bool:
    """Returns whether `path` looks like an HF model dir rather than a maxlm run or checkpoint."""
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir() and not (path / "params").is_dir()


def from_pretrained(path: str | os.PathLike, dtype: str | None = None, mesh: Mesh | None = None) -> Pretrained:
    """Returns the model at `path` (maxlm run / checkpoints / step dir, or HF model dir), ready to call.

    `dtype` sets the compute dtype (default: the run's; float32 for an HF dir, whose weights
    are then also held in float32, or in bfloat16 when dtype="bfloat16"). A maxlm run loads
    its latest step. The default mesh shards params over all local devices (fsdp).
    """
    if dtype is not None and dtype not in choices(ComputeDtype):
        raise MaxlmError(f"dtype must be one of {', '.join(choices(ComputeDtype))}, got {dtype!r}")
    path = Path(path).resolve()
    mesh = mesh or make_mesh(MeshConfig(data=1, fsdp=-1))
    if is_hf_dir(path):
        cfg, params = read_hf(path, "bfloat16" if dtype == "bfloat16" else "float32", mesh)
        tokenizer = str(path) if has_hf_tokenizer(path) else None
    else:
        stored = StoredStep(path)
        cfg = stored.config
        # A LoRA run loads as its base with the adapters merged in: a plain model to sample and score.
        params = restore_plain(stored.checkpoints, stored.step, cfg.model, mesh)
        tok = stored.tokenizer_path()
        tokenizer = str(tok) if tok else None
    if dtype is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))
    graphdef, _, _ = params_lib.abstract(cfg.model)
    return Pretrained(cfg, params, graphdef, tokenizer, mesh, name=str(path))
