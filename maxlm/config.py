"""Typed config: dataclass schema, YAML files with `base_config:` inheritance, `a.b=v` overrides.

Every key a user can write is a dataclass field below; YAML only sets values. Unknown or
mistyped keys fail at load time, naming the file and the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maxlm.errors import MaxlmError
from maxlm.files import atomic

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class RopeScalingConfig:
    """RoPE frequency scaling; `type: llama3` is Llama 3.1+'s piecewise rule."""

    type: str = "none"  # none | llama3 | linear
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass
class ModelConfig:
    """Decoder shape and numerics; covers Llama 2, Llama 3.x and Qwen2."""

    family: str = "llama"  # llama | qwen2: naming used for HF export
    vocab_size: int = 0  # 0: taken from the tokenizer
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 0  # 0: hidden_size // num_heads
    mlp_dim: int = 688
    max_seq_len: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    dtype: str = "bfloat16"  # compute dtype; logits and loss are always f32
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"  # none | full | dots | dots_no_batch
    attention: str = "xla"  # xla | cudnn
    scalar_head: bool = False  # adds a [B, T] scalar output (reward / value models)
    init_std: float = 0.02


@dataclass
class SourceConfig:
    """One training source: a file, glob or `builtin:` corpus, with its mixture weight."""

    path: str = ""
    weight: float = 1.0
    format: str = "auto"  # auto | jsonl | parquet | arrayrecord | text
    text_key: str = "text"
    rows: str = ""  # a slice of the source's records, "start:stop"; ints or percents ("0:90%", "90%:")


@dataclass
class DataConfig:
    """Where the tokens come from and how they are packed into rows."""

    train_files: list[SourceConfig] = field(default_factory=list)
    eval_files: list[SourceConfig] = field(default_factory=list)
    seqio_task: str = ""  # a registered seqio Task or Mixture (needs the [seqio] extra)
    seq_len: int = 512
    on_bad_record: str = "error"  # error | skip (skipped records are counted in metrics)
    shuffle: bool = True
    add_bos: bool = True
    add_eos: bool = True
    chat_template: str = "default"  # sft/rm/dpo/ppo/grpo: default | llama3 | chatml | hf (the HF tokenizer's own)
    prefetch: int = 4  # batches prepared ahead of the step in a background thread
    worker_count: int = 0  # >0: Grain multiprocessing workers for tokenization


@dataclass
class TokenizerConfig:
    """Tokenizer to load, or to train (sentencepiece) when `path` does not exist yet."""

    path: str = ""  # .model file or HF tokenizer dir; "": run_dir/tokenizer.model
    vocab_size: int = 4096
    model_type: str = "bpe"  # bpe | unigram
    max_sentences: int = 200000
    character_coverage: float = 0.9995


@dataclass
class TrainConfig:
    """Optimizer, schedule, loop lengths and logging."""

    steps: int = 1000
    seed: int = 0
    global_batch_size: int = 32
    grad_accum_steps: int = 1
    learning_rate: float = 3e-4
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: share of steps spent decaying
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    z_loss: float = 0.0
    loss_chunks: int = 4  # pretrain/sft: LM head + loss over up to this many chunks of each row (a divisor of T); the [B, T, V] logits never exist whole
    log_every: int = 10
    eval_every: int = 0  # 0: no periodic eval
    eval_steps: int = 10
    max_consecutive_nonfinite: int = 5
    init_from: str = ""  # maxlm run dir / checkpoint, or a maxlm import of an HF model


@dataclass
class RewardModelConfig:
    """task: rm, a Bradley-Terry reward model on preference pairs."""

    center_coef: float = 0.0  # + center_coef·(r_c + r_r)²: keeps rewards near zero mean
    pooling: str = "last"  # last: the head at the reply's last token (HF ForSequenceClassification); mean: over the reply's tokens


@dataclass
class PreferenceConfig:
    """task: dpo and its family; sigmoid/ipo/hinge compare with the frozen `train.init_from` model."""

    kind: str = "sigmoid"  # sigmoid (DPO; label_smoothing > 0: cDPO) | ipo | hinge | simpo | orpo
    beta: float = 0.1  # orpo: the weight of the odds-ratio term (ORPO's lambda)
    label_smoothing: float = 0.0
    gamma: float = 0.5  # simpo's target margin
    precompute_ref: bool = False  # score every example under the reference once at the start, then free it


@dataclass
class RLConfig:
    """task: ppo | grpo: sampled rollouts, rewards, advantages, several clipped updates per rollout batch."""

    group_size: int = 8  # completions per prompt; train.global_batch_size counts prompts
    max_prompt_len: int = 128  # prompts are left-padded to this (one compile); longer ones are skipped
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    verifier: str = "arithmetic_exact"  # a name in maxlm/train/rewards.py VERIFIERS; unused when reward_model is set
    reward_model: str = ""  # a task: rm run (dir or checkpoint): its score is the reward, instead of the verifier's
    kl_coef: float = 0.04  # KL to the frozen train.init_from model; grpo: in the loss, ppo: per-token reward penalty
    kl_estimator: str = "k3"  # k1 | k3 | abs | mse
    kl_target: float = 0.0  # ppo, > 0: adapt kl_coef (Ziegler et al. 2019) toward this KL summed over a completion
    kl_horizon: float = 10000.0  # ppo: the adaptive controller's horizon, in completions
    clip_eps: float = 0.2
    epochs: int = 1  # passes over each rollout batch
    minibatches: int = 1  # optimizer updates per pass; the rollout rows split evenly
    gamma: float = 1.0  # ppo: discount
    lam: float = 0.95  # ppo: GAE lambda
    vf_coef: float = 0.1  # ppo: weight of the value loss (the value head shares the policy's trunk)
    value_clip_eps: float = 0.2  # ppo
    whiten_advantages: bool = True  # ppo


@dataclass
class CheckpointConfig:
    """Orbax checkpointing cadence and retention."""

    interval_steps: int = 100
    keep: int = 3
    async_save: bool = True


@dataclass
class MeshConfig:
    """Device mesh shape; one axis may be -1 to take the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclass
class SampleConfig:
    """Text sampled from the trained model at the end of a run."""

    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 1.0


@dataclass
class ExportConfig:
    """Hugging Face export at the end of a run."""

    hf_dir: str = ""  # "": no export; relative paths are inside run_dir


@dataclass
class Config:
    """A whole run: everything `maxlm train` reads."""

    run_dir: str = "runs/default"
    task: str = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rm: RewardModelConfig = field(default_factory=RewardModelConfig)
    dpo: PreferenceConfig = field(default_factory=PreferenceConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


CHOICES = {
    "task": ("pretrain", "sft", "rm", "dpo", "ppo", "grpo"),
    "rl.verifier": ("arithmetic_exact", "gsm8k_exact", "format"),
    "rl.kl_estimator": ("k1", "k3", "abs", "mse"),
    "dpo.kind": ("sigmoid", "ipo", "hinge", "simpo", "orpo"),
    "rm.pooling": ("last", "mean"),
    "data.chat_template": ("default", "llama3", "chatml", "hf"),
    "model.family": ("llama", "qwen2"),
    "model.rope_scaling.type": ("none", "llama3", "linear"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.remat": ("none", "full", "dots", "dots_no_batch"),
    "model.attention": ("xla", "cudnn"),
    "data.on_bad_record": ("error", "skip"),
    "tokenizer.model_type": ("bpe", "unigram"),
    "train.schedule": ("cosine", "wsd", "constant"),
}


# ---------------------------------------------------------------- loading


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        keys.append(name)
        t = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, name + ".")
    return keys


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(key: str, cls: type, prefix: str, where: str) -> MaxlmError:
    valid = _all_keys(cls, prefix)
    near = difflib.get_close_matches(prefix + key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]}?" if near else ""
    return MaxlmError(f"{where}: unknown key {prefix + key}{hint}")


def coerce(value: Any, t: Any, key: str, where: str) -> Any:
    """Returns `value` checked and converted to type `t`, or raises naming `key`."""
    origin = typing.get_origin(t)
    if dataclasses.is_dataclass(t):
        if isinstance(value, str) and dataclasses.fields(t)[0].type in ("str", str):
            value = {dataclasses.fields(t)[0].name: value}  # "path" shorthand for {path: ...}
        if not isinstance(value, dict):
            raise MaxlmError(f"{where}: {key} must be a mapping, got {value!r}")
        return _build(t, value, key + ".", where)
    if origin is list:
        (item_t,) = typing.get_args(t)
        if value is None:
            return []
        if not isinstance(value, list):
            value = [value]
        return [coerce(v, item_t, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return None if value is None else coerce(value, args[0], key, where)
    if t is bool:
        if isinstance(value, bool):
            return value
        raise MaxlmError(f"{where}: {key} must be true or false, got {value!r}")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise MaxlmError(f"{where}: {key} must be an integer, got {value!r}")
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 3e-4 (no dot) as a string
            except ValueError:
                pass
        raise MaxlmError(f"{where}: {key} must be a number, got {value!r}")
    if t is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = str(value)
            if key in CHOICES and value not in CHOICES[key]:
                raise MaxlmError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}; got {value!r}")
            return value
        raise MaxlmError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _build(cls: type, raw: dict, prefix: str, where: str):
    types_ = _field_types(cls)
    kwargs = {}
    for k, v in raw.items():
        if k not in types_:
            raise _unknown_key(str(k), cls, prefix, where)
        kwargs[k] = coerce(v, types_[k], prefix + k, where)
    return cls(**kwargs)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """Returns the raw mapping of a YAML file with its `base_config:` chain merged under it."""
    if not path.exists():
        raise MaxlmError(f"{path}: config file not found")
    if path in seen:
        raise MaxlmError(f"{path}: base_config cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise MaxlmError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise MaxlmError(f"{path}: expected a mapping of config keys at the top level")
    bases = raw.pop("base_config", None) or []
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        bpath = (path.parent / b) if (path.parent / b).exists() else CONFIGS_DIR / b
        merged = _merge(merged, _read_yaml(bpath.resolve(), seen + (path,)))
    return _merge(merged, raw)


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise MaxlmError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Returns (dotted key, YAML-parsed value) of a `key.sub=value` command-line override."""
    if "=" not in text:
        raise MaxlmError(f"override {text!r}: expected key.sub=value")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    """Returns the validated Config from a YAML file (or defaults) plus `a.b=v` overrides."""
    raw = _read_yaml(Path(path).resolve()) if path else {}
    where = str(path) if path else "defaults"
    _build(Config, raw, "", where)  # errors in the file itself are named before overrides
    for text in overrides:
        key, value = parse_override(text)
        _check_key(key, f"override {text!r}")
        _set_dotted(raw, key, value)
    cfg = _build(Config, raw, "", where if not overrides else f"{where} (with overrides)")
    validate(cfg)
    return cfg


def _check_key(dotted: str, where: str) -> None:
    cls: Any = Config
    prefix = ""
    for part in dotted.split("."):
        types_ = _field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in types_:
            raise _unknown_key(part, cls, prefix, where) if dataclasses.is_dataclass(cls) else MaxlmError(
                f"{where}: {prefix.rstrip('.')} has no sub-keys"
            )
        cls = types_[part]
        prefix += part + "."


def validate(cfg: Config) -> None:
    """Raises MaxlmError for values that are well-typed but inconsistent."""
    m, t, d = cfg.model, cfg.train, cfg.data
    positive = {
        "model.hidden_size": m.hidden_size, "model.num_layers": m.num_layers,
        "model.num_heads": m.num_heads, "model.num_kv_heads": m.num_kv_heads,
        "model.mlp_dim": m.mlp_dim, "train.global_batch_size": t.global_batch_size,
        "train.grad_accum_steps": t.grad_accum_steps, "data.seq_len": d.seq_len,
        "train.log_every": t.log_every, "train.loss_chunks": t.loss_chunks, "checkpoint.keep": cfg.checkpoint.keep,
    }
    for k, v in positive.items():
        if v <= 0:
            raise MaxlmError(f"{k} must be > 0, got {v}")
    if t.steps < 0:
        raise MaxlmError(f"train.steps must be >= 0, got {t.steps}")
    if m.num_heads % m.num_kv_heads:
        raise MaxlmError(f"model.num_heads ({m.num_heads}) must be a multiple of model.num_kv_heads ({m.num_kv_heads})")
    if m.head_dim == 0 and m.hidden_size % m.num_heads:
        raise MaxlmError(f"model.hidden_size ({m.hidden_size}) must divide by model.num_heads ({m.num_heads}) or set model.head_dim")
    if t.global_batch_size % t.grad_accum_steps:
        raise MaxlmError(
            f"train.global_batch_size ({t.global_batch_size}) must divide by train.grad_accum_steps ({t.grad_accum_steps})"
        )
    if d.seq_len > m.max_seq_len:
        raise MaxlmError(f"data.seq_len ({d.seq_len}) exceeds model.max_seq_len ({m.max_seq_len})")
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise MaxlmError(f"mesh: at most one axis may be -1 and the others must be >= 1; got data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]}")
    if cfg.task in ("ppo", "grpo"):
        r = cfg.rl
        for k, v in {"rl.group_size": r.group_size, "rl.epochs": r.epochs, "rl.minibatches": r.minibatches,
                     "rl.max_new_tokens": r.max_new_tokens, "rl.max_prompt_len": r.max_prompt_len}.items():
            if v <= 0:
                raise MaxlmError(f"{k} must be > 0, got {v}")
        rows = t.global_batch_size * r.group_size
        if rows % (r.minibatches * t.grad_accum_steps):
            raise MaxlmError(
                f"train.global_batch_size x rl.group_size = {rows} rollout rows must divide by "
                f"rl.minibatches ({r.minibatches}) x train.grad_accum_steps ({t.grad_accum_steps})"
            )
    for s in d.train_files + d.eval_files:
        if s.weight <= 0:
            raise MaxlmError(f"data source {s.path}: weight must be > 0, got {s.weight}")


def head_dim(m: ModelConfig) -> int:
    """Returns the per-head width."""
    return m.head_dim or m.hidden_size // m.num_heads


def to_dict(cfg: Any) -> dict:
    """Returns the config as plain nested dicts and lists (YAML / JSON ready)."""
    return dataclasses.asdict(cfg)


def from_dict(raw: dict, where: str = "config") -> Config:
    """Returns a validated Config from plain nested dicts (e.g. a checkpoint's saved config)."""
    cfg = _build(Config, raw, "", where)
    validate(cfg)
    return cfg


def dump_yaml(cfg: Config, path: str | os.PathLike) -> None:
    """Writes the resolved config as YAML, atomically."""
    path = Path(path)
    atomic.write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
