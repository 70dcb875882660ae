"""Tensor names and layouts between maxlm params and HF Llama/Qwen2/Qwen3/Mistral/Gemma2/Gemma3/Mixtral/Qwen3-MoE safetensors;
reading and streaming-writing those files.

maxlm weights put the contracted (input) dims first: q `[D, N, H]`, o `[N, H, D]`,
gate `[D, F]`, lm_head `[D, V]`. A torch Linear weight is `[out, in]`, so HF's tensor is the
maxlm one flattened to `[in, out]` and transposed. RoPE needs no permutation: maxlm rotates
the two halves of each head (HF's `rotate_half` layout), not interleaved pairs.
An MoE's experts are stacked in maxlm (gate `[E, D, F]`, router `[D, E]`) and one tensor per
expert in HF (`{j}` in the names below), as transformers 5 still saves them.
Letters: D model, N heads, K kv heads, H head dim, F mlp, V vocab, L layers, E experts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from maxlm.errors import MaxlmError

# Layout of the HF tensor: an int n is a Linear whose first n maxlm dims are its inputs;
# "same" keeps the shape; "flat" flattens (biases [N, H] -> [N*H]); "row" is [1, D].
Layout = int | str

# maxlm leaf under params["layers"] -> (name under `model.layers.{i}.`, layout).
LAYER_TENSORS: dict[str, tuple[str, Layout]] = {
    "attn/q": ("self_attn.q_proj.weight", 1),
    "attn/k": ("self_attn.k_proj.weight", 1),
    "attn/v": ("self_attn.v_proj.weight", 1),
    "attn/o": ("self_attn.o_proj.weight", 2),
    "attn/q_bias": ("self_attn.q_proj.bias", "flat"),
    "attn/k_bias": ("self_attn.k_proj.bias", "flat"),
    "attn/v_bias": ("self_attn.v_proj.bias", "flat"),
    "attn/q_norm/scale": ("self_attn.q_norm.weight", "flat"),
    "attn/k_norm/scale": ("self_attn.k_norm.weight", "flat"),
    "attn_norm/scale": ("input_layernorm.weight", "flat"),
    "mlp_norm/scale": ("post_attention_layernorm.weight", "flat"),
    "mlp/gate": ("mlp.gate_proj.weight", 1),
    "mlp/up": ("mlp.up_proj.weight", 1),
    "mlp/down": ("mlp.down_proj.weight", 1),
}
# Gemma's four norms a layer: its post_attention_layernorm norms the attention output, not the MLP input.
GEMMA_LAYER_TENSORS = {
    **LAYER_TENSORS,
    "mlp_norm/scale": ("pre_feedforward_layernorm.weight", "flat"),
    "attn_post_norm/scale": ("post_attention_layernorm.weight", "flat"),
    "mlp_post_norm/scale": ("post_feedforward_layernorm.weight", "flat"),
}
# The MLP of an MoE layer: a router and, for each expert j, a SwiGLU (Mixtral's w1 / w3 / w2 are gate / up / down).
MOE_TENSORS: dict[str, dict[str, tuple[str, Layout]]] = {
    "mixtral": {
        "moe/router": ("block_sparse_moe.gate.weight", 1),
        "moe/gate": ("block_sparse_moe.experts.{j}.w1.weight", 1),
        "moe/up": ("block_sparse_moe.experts.{j}.w3.weight", 1),
        "moe/down": ("block_sparse_moe.experts.{j}.w2.weight", 1),
    },
    "qwen3_moe": {
        "moe/router": ("mlp.gate.weight", 1),
        "moe/gate": ("mlp.experts.{j}.gate_proj.weight", 1),
        "moe/up": ("mlp.experts.{j}.up_proj.weight", 1),
        "moe/down": ("mlp.experts.{j}.down_proj.weight", 1),
    },
}
TOP_TENSORS: dict[str, tuple[str, Layout]] = {
    "embed": ("model.embed_tokens.weight", "same"),
    "final_norm/scale": ("model.norm.weight", "flat"),
    "lm_head": ("lm_head.weight", 1),
    "score_head": ("score.weight", "row"),
}
# HF tensors with no maxlm counterpart that an import may drop: a rotary cache some old
# checkpoints saved, and Llama's / Qwen3's o_proj bias (attention_bias), accepted only when all zero.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
ZERO_ONLY_SUFFIX = "self_attn.o_proj.bias"

SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def layer_tensors(family: str) -> dict[str, tuple[str, Layout]]:
    """Returns {maxlm leaf under params["layers"]: (HF name under `model.layers.{i}.`, layout)} for `family`;
    a name holding `{j}` is one tensor per expert j of a stacked [E, ...] leaf."""
    if family in MOE_TENSORS:
        return {k: v for k, v in LAYER_TENSORS.items() if not k.startswith("mlp/")} | MOE_TENSORS[family]
    return GEMMA_LAYER_TENSORS if family in ("gemma2", "gemma3") else LAYER_TENSORS


def per_expert(name: str) -> bool:
    """Returns whether layer tensor `name` is one of a set, one per expert (`{j}` in it)."""
    return "{j}" in name


def layer_name(i: int, name: str, j: int | None = None) -> str:
    """Returns the full HF name of layer `i`'s tensor `name` (of expert `j` for a per-expert name)."""
    return f"model.layers.{i}.{name if j is None else name.format(j=j)}"


def hf_shape(shape: tuple[int, ...], layout: Layout) -> tuple[int, ...]:
    """Returns the HF shape of a maxlm weight of `shape` (one layer's, for stacked leaves)."""
    if isinstance(layout, int):
        return (math.prod(shape[layout:]), math.prod(shape[:layout]))
    return {"same": shape, "flat": (math.prod(shape),), "row": (1, math.prod(shape))}[layout]


def to_hf(w: np.ndarray, layout: Layout) -> np.ndarray:
    """Returns maxlm weight `w` (one layer's) in HF's layout, C-contiguous."""
    if isinstance(layout, int):
        w = w.reshape(math.prod(w.shape[:layout]), -1).T
    else:
        w = w.reshape(hf_shape(w.shape, layout))
    return np.ascontiguousarray(w)


def from_hf(w: np.ndarray, shape: tuple[int, ...], layout: Layout) -> np.ndarray:
    """Returns HF tensor `w` in maxlm's layout `shape` (one layer's, for stacked leaves)."""
    if isinstance(layout, int):
        return w.T.reshape(shape)
    return w.reshape(shape)


class SafetensorsDir:
    """The tensors of an HF model dir, opened lazily across its single or sharded safetensors files."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        self.dir = hf_dir
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise MaxlmError(f"{index}: expected a JSON object with a weight_map of tensor name -> file") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in hf_dir.glob("*.safetensors"))
            if not files:
                other = [p.name for p in hf_dir.glob("*.bin")] + [p.name for p in hf_dir.glob("*.pt")]
                hint = f" (found {', '.join(other)}: convert them to safetensors first)" if other else ""
                raise MaxlmError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json{hint}")
        self._stack = contextlib.ExitStack()
        self._where: dict[str, tuple[str, object]] = {}
        for name in files:
            path = hf_dir / name
            if not path.is_file():
                raise MaxlmError(f"{path}: listed in {index.name} but not found")
            try:
                f = self._stack.enter_context(safe_open(str(path), framework="numpy"))
            except Exception as e:  # safetensors raises its own SafetensorError on bad headers
                raise MaxlmError(f"{path}: not a readable safetensors file: {e}") from None
            for key in f.keys():
                self._where[key] = (name, f)

    def names(self) -> set[str]:
        """Returns every tensor name in the files."""
        return set(self._where)

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Returns tensor `name` as stored, checked against `shape` when given."""
        if name not in self._where:
            raise MaxlmError(f"{self.dir}: tensor {name} not found in the safetensors files")
        file, f = self._where[name]
        w = f.get_tensor(name)
        if shape is not None and tuple(w.shape) != tuple(shape):
            raise MaxlmError(f"{self.dir / file}: tensor {name} has shape {list(w.shape)}, config.json implies {list(shape)}")
        return w

    def close(self) -> None:
        """Closes the files."""
        self._stack.close()


# A tensor to write: (name, shape, dtype name, function returning its array when its turn comes).
Entry = tuple[str, tuple[int, ...], str, Callable[[], np.ndarray]]


def write_safetensors(path: Path, entries: Iterable[Entry]) -> None:
    """Writes one safetensors file, asking for each array only when its bytes are due.

    The header needs every shape and offset up front, and those are known from metadata,
    so the file is streamed: host memory holds one tensor at a time, never the shard.
    """
    entries = list(entries)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, _ in entries:
        nbytes = entry_bytes((name, shape, dtype, None))
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format asks that tensor data start 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, dtype, make in entries:
            w = np.ascontiguousarray(make(), dtype=np_dtype(dtype))
            if tuple(w.shape) != tuple(shape):
                raise ValueError(f"{name}: produced shape {w.shape}, header says {shape}")
            f.write(w.reshape(-1).view(np.uint8).data)
        f.flush()
        os.fsync(f.fileno())


def np_dtype(name: str) -> np.dtype:
    """Returns the numpy dtype of a maxlm dtype name (bfloat16 from ml_dtypes)."""
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def entry_bytes(entry: Entry) -> int:
    """Returns how many bytes `entry`'s tensor takes in the file."""
    _, shape, dtype, _ = entry
    return math.prod(shape) * np_dtype(dtype).itemsize
