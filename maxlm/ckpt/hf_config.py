"""Hugging Face `config.json` <-> maxlm ModelConfig, for Llama, Qwen2, Qwen3 and Mistral decoders.

Reads both the transformers 5 layout (`rope_parameters`, holding `rope_theta`) and the
older one (top-level `rope_theta`, `rope_scaling` with `type` or `rope_type`); writes both,
so transformers 4.43+ and 5.x read an export the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maxlm.config import ModelConfig, RopeScalingConfig, head_dim
from maxlm.errors import MaxlmError

CAUSAL_LM = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "MistralForCausalLM": "mistral"}
ARCHITECTURE = {family: arch for arch, family in CAUSAL_LM.items()}
# A model with a scalar (reward / value) head exports as a one-label sequence classifier.
SEQUENCE_CLASSIFIER = {family: arch.replace("ForCausalLM", "ForSequenceClassification") for family, arch in ARCHITECTURE.items()}
ROPE_TYPES = ("default", "linear", "llama3")


def read_config_json(hf_dir: Path) -> dict:
    """Returns the parsed `hf_dir/config.json`, or raises naming what is missing or malformed."""
    if not hf_dir.is_dir():
        raise MaxlmError(f"{hf_dir}: no such Hugging Face model directory")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise MaxlmError(f"{path}: not found; expected a Hugging Face model dir with config.json and *.safetensors")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MaxlmError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(raw, dict):
        raise MaxlmError(f"{path}: expected a JSON object")
    return raw


def model_config(raw: dict, where: str) -> ModelConfig:
    """Returns the ModelConfig of an HF Llama / Qwen2 / Qwen3 / Mistral causal-LM config; `where` names the file in errors."""
    archs = raw.get("architectures") or [raw.get("model_type", "(none given)")]
    arch = archs[0]
    if arch not in CAUSAL_LM:
        raise MaxlmError(f"{where}: architecture {arch} is not supported (supported: {', '.join(CAUSAL_LM)})")
    family = CAUSAL_LM[arch]

    def need(key: str) -> Any:
        if raw.get(key) is None:
            raise MaxlmError(f"{where}: missing required key {key}")
        return raw[key]

    if raw.get("hidden_act", "silu") != "silu":
        raise MaxlmError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported (maxlm's MLP is SwiGLU: silu)")
    if raw.get("mlp_bias"):
        raise MaxlmError(f"{where}: mlp_bias true is not supported (maxlm's MLP has no biases)")
    if raw.get("use_sliding_window"):
        raise MaxlmError(f"{where}: use_sliding_window true is not supported (per-layer windows; maxlm slides one only for MistralForCausalLM)")
    heads = need("num_attention_heads")
    theta, scaling = _rope(raw, where)
    return ModelConfig(
        family=family,
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or 0,
        mlp_dim=need("intermediate_size"),
        max_seq_len=raw.get("max_position_embeddings") or 2048,
        rope_theta=float(theta),
        rope_scaling=scaling,
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        # Qwen2 always has q/k/v biases; Llama and Qwen3 have them (and an o_proj bias) with attention_bias.
        qkv_bias=family == "qwen2" or bool(raw.get("attention_bias", False)),
        qk_norm=family == "qwen3",
        # Mistral slides on every layer (Qwen's use_sliding_window, refused above, is per layer).
        sliding_window=(raw.get("sliding_window") or 0) if family == "mistral" else 0,
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


def _rope(raw: dict, where: str) -> tuple[float, RopeScalingConfig]:
    """Returns (rope_theta, scaling) from `rope_parameters` (transformers 5) or `rope_scaling` (older)."""
    params = raw.get("rope_parameters") or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        raise MaxlmError(f"{where}: per-layer-type rope_parameters are not supported")
    spec = params or raw.get("rope_scaling") or {}
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    kind = spec.get("rope_type", spec.get("type", "default")) or "default"
    if kind not in ROPE_TYPES:
        raise MaxlmError(f"{where}: rope type {kind} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind == "default":
        return theta, RopeScalingConfig(type="none")
    if "factor" not in spec:
        raise MaxlmError(f"{where}: rope scaling {kind} needs a factor")
    if kind == "linear":
        return theta, RopeScalingConfig(type="linear", factor=float(spec["factor"]))
    missing = [k for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings") if k not in spec]
    if missing:
        raise MaxlmError(f"{where}: rope scaling llama3 needs {', '.join(missing)}")
    return theta, RopeScalingConfig(
        type="llama3",
        factor=float(spec["factor"]),
        low_freq_factor=float(spec["low_freq_factor"]),
        high_freq_factor=float(spec["high_freq_factor"]),
        original_max_position=int(spec["original_max_position_embeddings"]),
    )


def hf_config(m: ModelConfig, *, dtype: str, bos_id: int | None, eos_id: int | None, pad_id: int | None, score: bool) -> dict:
    """Returns the HF config.json for `m`: a causal LM, or with `score` a one-label sequence classifier."""
    sc = m.rope_scaling
    scaling = None
    if sc.type == "linear":
        scaling = {"rope_type": "linear", "factor": sc.factor}
    elif sc.type == "llama3":
        scaling = {
            "rope_type": "llama3", "factor": sc.factor, "low_freq_factor": sc.low_freq_factor,
            "high_freq_factor": sc.high_freq_factor, "original_max_position_embeddings": sc.original_max_position,
        }
    out = {
        "architectures": [SEQUENCE_CLASSIFIER[m.family] if score else ARCHITECTURE[m.family]],
        "model_type": m.family,
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.mlp_dim,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "head_dim": head_dim(m),
        "hidden_act": "silu",
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": {**(scaling or {"rope_type": "default"}), "rope_theta": m.rope_theta},
        # A classifier has no LM head to tie.
        "tie_word_embeddings": m.tie_embeddings and not score,
        "initializer_range": m.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": dtype,
        # Written even when None: transformers would otherwise fill in Llama 2's ids 1 and 2.
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
    }
    if m.family in ("llama", "qwen3"):
        out.update(attention_bias=m.qkv_bias)
    if m.family == "llama":
        out.update(mlp_bias=False)
    if m.family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.num_layers)
    if m.family == "mistral":
        out.update(sliding_window=m.sliding_window or None)
    if score:
        out.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return out


def generation_config(bos_id: int | None, eos_id: int | None, pad_id: int | None, temperature: float, top_k: int, top_p: float) -> dict:
    """Returns generation_config.json: the tokenizer's special ids and the run's sampling settings."""
    out: dict[str, Any] = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if temperature > 0:
        out.update(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        out.update(do_sample=False)
    return out
