"""Hugging Face `config.json` <-> maxlm ModelConfig, for Llama, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 (text), Mixtral and
Qwen3-MoE decoders.

Reads both the transformers 5 layout (`rope_parameters`, holding `rope_theta`; Gemma 3's per layer
type) and the older one (top-level `rope_theta`, `rope_scaling` with `type` or `rope_type`,
Gemma 3's `rope_local_base_freq`); writes both, so transformers 4.43+ and 5.x read an export the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maxlm.config import (
    ModelConfig,
    RopeScalingConfig,
    expert_dim,
    head_dim,
    sliding_layers,
)
from maxlm.errors import MaxlmError

CAUSAL_LM = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "MistralForCausalLM": "mistral",
             "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3", "MixtralForCausalLM": "mixtral", "Qwen3MoeForCausalLM": "qwen3_moe"}
ARCHITECTURE = {family: arch for arch, family in CAUSAL_LM.items()}
# A model with a scalar (reward / value) head exports as a one-label sequence classifier
# (Gemma3ForSequenceClassification is the vision-language one: the text model's has its own name).
SEQUENCE_CLASSIFIER = {family: arch.replace("ForCausalLM", "ForSequenceClassification") for family, arch in ARCHITECTURE.items()}
SEQUENCE_CLASSIFIER["gemma3"] = "Gemma3TextForSequenceClassification"
MODEL_TYPE = {"gemma3": "gemma3_text"}  # HF's model_type where it is not the family's name
ROPE_TYPES = ("default", "linear", "llama3")
GEMMA = ("gemma2", "gemma3")
MOE = ("mixtral", "qwen3_moe")
# transformers' Gemma2Config / Gemma3TextConfig defaults, for the keys a config.json may leave out.
GEMMA_DEFAULTS = {
    "gemma2": {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096, "query_pre_attn_scalar": 256},
    "gemma3": {"final_logit_softcapping": None, "sliding_window": 4096, "query_pre_attn_scalar": 256},
}
LAYER_TYPES = ("sliding_attention", "full_attention")


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
    """Returns the ModelConfig of an HF causal-LM config of a supported family; `where` names the file in errors."""
    archs = raw.get("architectures") or [raw.get("model_type", "(none given)")]
    arch = archs[0]
    if arch not in CAUSAL_LM:
        raise MaxlmError(f"{where}: architecture {arch} is not supported (supported: {', '.join(CAUSAL_LM)})")
    family = CAUSAL_LM[arch]

    def need(key: str) -> Any:
        if raw.get(key) is None:
            raise MaxlmError(f"{where}: missing required key {key}")
        return raw[key]

    gemma = family in GEMMA
    if gemma and raw.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise MaxlmError(f"{where}: hidden_activation {raw['hidden_activation']!r} is not supported (maxlm's Gemma MLP is gelu_pytorch_tanh)")
    if not gemma and raw.get("hidden_act", "silu") != "silu":
        raise MaxlmError(f"{where}: hidden_act {raw['hidden_act']!r} is not supported (maxlm's MLP is SwiGLU: silu)")
    if raw.get("mlp_bias"):
        raise MaxlmError(f"{where}: mlp_bias true is not supported (maxlm's MLP has no biases)")
    if raw.get("use_sliding_window"):
        raise MaxlmError(f"{where}: use_sliding_window true is not supported (per-layer windows; maxlm slides one only for MistralForCausalLM)")
    if raw.get("use_bidirectional_attention"):
        raise MaxlmError(f"{where}: use_bidirectional_attention true is not supported (maxlm's decoder is causal)")
    moe = _moe_keys(raw, family, where) if family in MOE else {}
    heads = need("num_attention_heads")
    if family == "gemma3":
        theta, scaling, local_theta = _gemma3_rope(raw, where)
    else:
        (theta, scaling), local_theta = _rope(raw, where), 0.0
    g = {k: raw.get(k, v) for k, v in GEMMA_DEFAULTS[family].items()} if gemma else {}
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
        # Qwen2 always has q/k/v biases; Llama and Qwen3 (-MoE) have them (and an o_proj bias) with attention_bias.
        qkv_bias=family == "qwen2" or bool(raw.get("attention_bias", False)),
        qk_norm=family in ("qwen3", "qwen3_moe", "gemma3"),
        # Mistral and Mixtral slide on every layer, Gemma on its local ones (Qwen's use_sliding_window, refused above, is per layer).
        sliding_window=(g.get("sliding_window", raw.get("sliding_window")) or 0) if family in ("mistral", "mixtral", *GEMMA) else 0,
        global_every=_global_every(raw, family, need("num_hidden_layers"), where) if gemma else 0,
        rope_local_theta=float(local_theta),
        query_pre_attn_scalar=int(g.get("query_pre_attn_scalar") or 0),
        # Gemma 3's attention takes no attn_logit_softcapping even when its config holds one: neither does maxlm.
        attn_softcap=float(g.get("attn_logit_softcapping") or 0),
        final_softcap=float(g.get("final_logit_softcapping") or 0),
        post_norms=gemma,
        norm_offset=gemma,
        embed_scale=gemma,
        mlp_activation="gelu_tanh" if gemma else "silu",
        tie_embeddings=bool(raw.get("tie_word_embeddings", gemma)),  # Gemma's classes tie by default
        **moe,
    )


def _moe_keys(raw: dict, family: str, where: str) -> dict:
    """Returns the ModelConfig expert keys of a Mixtral / Qwen3-MoE config, refusing the layouts maxlm does not build."""
    experts = raw.get("num_local_experts") or raw.get("num_experts")
    if not experts:
        raise MaxlmError(f"{where}: missing required key {'num_local_experts' if family == 'mixtral' else 'num_experts'}")
    if raw.get("router_jitter_noise"):
        raise MaxlmError(f"{where}: router_jitter_noise {raw['router_jitter_noise']} is not supported (maxlm's router adds no noise)")
    if family == "qwen3_moe":
        if raw.get("mlp_only_layers") or raw.get("decoder_sparse_step", 1) != 1:
            raise MaxlmError(f"{where}: dense layers among the sparse ones (mlp_only_layers {raw.get('mlp_only_layers') or []}, "
                             f"decoder_sparse_step {raw.get('decoder_sparse_step', 1)}) are not supported: maxlm needs every layer sparse "
                             "(mlp_only_layers [] and decoder_sparse_step 1)")
        if raw.get("moe_intermediate_size") is None:
            raise MaxlmError(f"{where}: missing required key moe_intermediate_size")
    return {
        "num_experts": int(experts),
        "experts_per_token": int(raw.get("num_experts_per_tok", 2)),
        "moe_mlp_dim": int(raw["moe_intermediate_size"]) if family == "qwen3_moe" else 0,
        # transformers' Qwen3MoeConfig defaults norm_topk_prob to false; Mixtral always renormalizes.
        "router_renormalize": family == "mixtral" or bool(raw.get("norm_topk_prob", False)),
        "router_aux_coef": float(raw.get("router_aux_loss_coef", 0.001)),
    }


def _global_every(raw: dict, family: str, layers: int, where: str) -> int:
    """Returns n where every n-th layer of `layer_types` is full_attention and the rest slide (n > layers: all slide)."""
    types = raw.get("layer_types")
    if types is None:  # configs from before layer_types: Gemma 2 alternates, Gemma 3 has a pattern
        return 2 if family == "gemma2" else int(raw.get("sliding_window_pattern", 6))
    bad = [t for t in types if t not in LAYER_TYPES]
    if bad or len(types) != layers:
        raise MaxlmError(f"{where}: layer_types must list {layers} of {', '.join(LAYER_TYPES)}, got {types}")
    for n in range(1, layers + 2):
        if types == [LAYER_TYPES[(i + 1) % n == 0] for i in range(layers)]:
            return n
    raise MaxlmError(f"{where}: layer_types {types} is not supported (maxlm makes every n-th layer full_attention, the others sliding_attention)")


def _gemma3_rope(raw: dict, where: str) -> tuple[float, RopeScalingConfig, float]:
    """Returns (global rope_theta, global scaling, local rope_theta): per layer type (transformers 5) or legacy keys."""
    params = raw.get("rope_parameters") or {}
    if isinstance(params.get("full_attention"), dict):
        local = params.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise MaxlmError(f"{where}: rope_parameters.sliding_attention rope type {local['rope_type']} is not supported (supported: default)")
        theta, scaling = _rope({"rope_parameters": params["full_attention"]}, where, 1_000_000.0)
        return theta, scaling, local.get("rope_theta", 10_000.0)
    theta, scaling = _rope(raw, where, 1_000_000.0)
    return theta, scaling, raw.get("rope_local_base_freq", 10_000.0)


def _rope(raw: dict, where: str, default_theta: float = 10000.0) -> tuple[float, RopeScalingConfig]:
    """Returns (rope_theta, scaling) from `rope_parameters` (transformers 5) or `rope_scaling` (older)."""
    params = raw.get("rope_parameters") or {}
    if params and all(isinstance(v, dict) for v in params.values()):
        raise MaxlmError(f"{where}: per-layer-type rope_parameters are not supported")
    spec = params or raw.get("rope_scaling") or {}
    theta = params.get("rope_theta", raw.get("rope_theta", default_theta))
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
        "model_type": MODEL_TYPE.get(m.family, m.family),
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
    if m.family in ("llama", "qwen3", "qwen3_moe"):
        out.update(attention_bias=m.qkv_bias)
    if m.family == "llama":
        out.update(mlp_bias=False)
    if m.family in ("qwen2", "qwen3", "qwen3_moe"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=m.num_layers)
    if m.family in ("mistral", "mixtral"):
        out.update(sliding_window=m.sliding_window or None)
    if m.family in MOE:
        out.update(num_experts_per_tok=m.experts_per_token, router_aux_loss_coef=m.router_aux_coef, output_router_logits=False)
    if m.family == "mixtral":
        out.update(num_local_experts=m.num_experts, router_jitter_noise=0.0)
    if m.family == "qwen3_moe":
        out.update(num_experts=m.num_experts, moe_intermediate_size=expert_dim(m), norm_topk_prob=m.router_renormalize,
                   decoder_sparse_step=1, mlp_only_layers=[])
    if m.family in GEMMA:
        out.update(_gemma_keys(m, out["rope_parameters"]))
        del out["hidden_act"]
    if score:
        out.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return out


def _gemma_keys(m: ModelConfig, rope: dict) -> dict:
    """Returns the config.json keys of Gemma 2 / Gemma 3 (text) beyond the Llama ones; `rope` is the global layers' rope_parameters."""
    out = {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": m.query_pre_attn_scalar,
        "sliding_window": m.sliding_window,
        "layer_types": [LAYER_TYPES[not sliding] for sliding in sliding_layers(m)],
        "final_logit_softcapping": m.final_softcap or None,
        "attn_logit_softcapping": m.attn_softcap or None,
        "attention_bias": False,
        "use_bidirectional_attention": False,
    }
    if m.family == "gemma3":
        out.update(
            rope_parameters={"full_attention": rope, "sliding_attention": {"rope_type": "default", "rope_theta": m.rope_local_theta}},
            rope_local_base_freq=m.rope_local_theta,  # with sliding_window_pattern, what transformers 4.x reads
            sliding_window_pattern=m.global_every,
        )
    return out


def generation_config(bos_id: int | None, eos_id: int | None, pad_id: int | None, temperature: float, top_k: int, top_p: float) -> dict:
    """Returns generation_config.json: the tokenizer's special ids and the run's sampling settings."""
    out: dict[str, Any] = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if temperature > 0:
        out.update(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        out.update(do_sample=False)
    return out
