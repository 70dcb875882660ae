"""A model ready to call: `maxlm.from_pretrained(path)(tokens) -> logits`, loaded from a maxlm run,
checkpoints dir or step dir, or straight from a Hugging Face Llama / Qwen2 model dir."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from maxlm.config import ComputeDtype, Config, MeshConfig, choices
from maxlm.errors import MaxlmError
from maxlm.models import params as params_lib
from maxlm.parallel.mesh import make_mesh


@dataclasses.dataclass(eq=False)
class Pretrained:
    """Loaded weights: `.config`, `.params`, `.graphdef`, `.tokenizer` (path or None), `.mesh`; call it on token ids."""

    config: Config
    params: Any
    graphdef: nnx.GraphDef
    tokenizer: str | None
    mesh: Mesh

    def __post_init__(self):
        graphdef = self.graphdef
        # One jitted function for every call: it compiles once per (batch, length) shape.
        self._forward = jax.jit(lambda params, tokens: params_lib.bind(graphdef, params)(tokens))

    def __call__(self, tokens_BxT) -> jax.Array:
        """Returns f32 logits [B, T, V] for int token ids [B, T]."""
        with jax.set_mesh(self.mesh):
            return self._forward(self.params, jnp.asarray(tokens_BxT, jnp.int32))

    def generate(self, prompt_tokens, max_new_tokens: int, temperature: float = 0.0, **kw) -> np.ndarray:
        """Returns int32 [B, T + N]: the (left-padded) prompts, then N new tokens per row."""
        from maxlm.infer.sampler import generate

        with jax.set_mesh(self.mesh):
            return generate(self.graphdef, self.config.model, self.params, prompt_tokens, max_new_tokens, temperature=temperature, **kw)

    def generate_text(self, prompts: list[str], max_new_tokens: int, **kw) -> list[str]:
        """Returns each prompt followed by its sampled continuation (chat runs: the reply to it as a user message)."""
        from maxlm.data.tokenizers import load_tokenizer
        from maxlm.infer.prompts import encode_prompts, until_stop

        if not self.tokenizer:
            raise MaxlmError("this model has no tokenizer files; pass token ids to generate() instead")
        tok = load_tokenizer(self.tokenizer)
        ids, stops = encode_prompts(self.config, tok, prompts)
        out = self.generate(ids, max_new_tokens, stop_ids=stops, **kw)
        return [p + tok.decode(until_stop(row, stops)) for p, row in zip(prompts, out[:, -max_new_tokens:])]


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
        from maxlm.ckpt.hf import read_hf
        from maxlm.ckpt.hf_tokenizer import has_hf_tokenizer

        cfg, params = read_hf(path, "bfloat16" if dtype == "bfloat16" else "float32", mesh)
        tokenizer = str(path) if has_hf_tokenizer(path) else None
    else:
        from maxlm.ckpt.hf_stored import StoredStep
        from maxlm.ckpt.manager import abstract_like

        stored = StoredStep(path)
        cfg = stored.config
        _, shapes, _ = params_lib.abstract(cfg.model)
        params = stored.restore(abstract_like(shapes, params_lib.shardings(cfg.model, mesh)))
        tok = stored.tokenizer_path()
        tokenizer = str(tok) if tok else None
    if dtype is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))
    graphdef, _, _ = params_lib.abstract(cfg.model)
    return Pretrained(cfg, params, graphdef, tokenizer, mesh)
