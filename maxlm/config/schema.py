"""The config schema: every key a user can write is a dataclass field below; YAML only sets values.

A choice is a `Literal[...]` on its field and a numeric range is stated beside it with
`ranged(...)`; the loader (load.py) checks both as it reads each key. `validate` adds the
checks that involve several fields.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from maxlm.config.ranges import out_of_range, ranged
from maxlm.errors import MaxlmError

Task = Literal["pretrain", "sft", "rm", "dpo", "ppo", "grpo"]
ComputeDtype = Literal["float32", "bfloat16", "float16"]
Verifier = Literal["arithmetic_exact", "gsm8k_exact", "format", "sort_exact"]  # the names of maxlm/tasks/rl/verifiers.py VERIFIERS
ChatTemplate = Literal["default", "llama3", "chatml", "hf"]  # the names of maxlm/data/chat.py TEMPLATES, plus hf
Remat = Literal["none", "full", "dots", "dots_no_batch"]  # the names of maxlm/models/llama.py REMAT_POLICIES


def per_task(default: Any, **by_task: Any) -> Any:
    """Returns a dataclass field with `default`, which the loader replaces by by_task[task] when a config of that task leaves it unset."""
    return field(default=default, metadata={"per_task": by_task})


def task_defaults(task: str, cls: type | None = None, prefix: str = "") -> dict[str, Any]:
    """Returns {dotted key: value} of the per-task defaults (`per_task`) that a config of `task` gets for keys it leaves unset."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls or Config):
        if task in f.metadata.get("per_task", {}):
            out[prefix + f.name] = f.metadata["per_task"][task]
        t = typing.get_type_hints(cls or Config)[f.name]
        if dataclasses.is_dataclass(t):
            out |= task_defaults(task, t, prefix + f.name + ".")
    return out


@dataclass
class RopeScalingConfig:
    """RoPE frequency scaling; `type: llama3` is Llama 3.1+'s piecewise rule."""

    type: Literal["none", "llama3", "linear"] = "none"
    factor: float = ranged(8.0, gt=0)
    low_freq_factor: float = ranged(1.0, gt=0)
    high_freq_factor: float = ranged(4.0, gt=0)
    original_max_position: int = ranged(8192, gt=0)


@dataclass
class ModelConfig:
    """Decoder shape and numerics; covers Llama 2, Llama 3.x, Qwen2, Qwen3, Mistral, Gemma 2, Gemma 3 (text), Mixtral and Qwen3-MoE."""

    family: Literal["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "mixtral", "qwen3_moe"] = "llama"  # naming used for HF export
    vocab_size: int = ranged(0, ge=0)  # 0: taken from the tokenizer
    hidden_size: int = ranged(256, gt=0)
    num_layers: int = ranged(4, gt=0)
    num_heads: int = ranged(4, gt=0)
    num_kv_heads: int = ranged(4, gt=0)
    head_dim: int = ranged(0, ge=0)  # 0: hidden_size // num_heads
    mlp_dim: int = ranged(688, gt=0)
    max_seq_len: int = ranged(2048, gt=0)
    rope_theta: float = ranged(10000.0, gt=0)
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    norm_eps: float = ranged(1e-5, gt=0)
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE; true exactly for families qwen3, qwen3_moe and gemma3
    sliding_window: int = ranged(0, ge=0)  # a query sees the keys this many positions back, itself included (Mistral, Gemma's local layers); 0: all
    global_every: int = ranged(0, ge=0)  # with sliding_window: layers n-1, 2n-1, ... see the full context (Gemma 2: 2, Gemma 3: 6); 0: every layer slides
    rope_local_theta: float = ranged(0.0, ge=0)  # > 0: the sliding layers' RoPE base, unscaled (Gemma 3); 0: every layer rotates alike
    query_pre_attn_scalar: int = ranged(0, ge=0)  # > 0: attention scores are scaled by its -1/2 power (Gemma); 0: by head_dim's
    attn_softcap: float = ranged(0.0, ge=0)  # > 0: attention scores become c·tanh(s / c) before the mask (Gemma 2)
    final_softcap: float = ranged(0.0, ge=0)  # > 0: logits become c·tanh(l / c), in training and sampling alike (Gemma 2, Gemma 3 optionally)
    post_norms: bool = False  # RMSNorm on the attention and MLP outputs before each residual add (Gemma)
    norm_offset: bool = False  # every RMSNorm scales by 1 + weight, its weights stored zero-centred (Gemma)
    embed_scale: bool = False  # token embeddings times sqrt(hidden_size), in the compute dtype (Gemma)
    mlp_activation: Literal["silu", "gelu_tanh"] = "silu"  # the gate's activation: SwiGLU, or GeGLU with the tanh-approximated GELU (Gemma)
    num_experts: int = ranged(0, ge=0)  # > 0: every layer's MLP is a mixture of this many SwiGLU experts (families mixtral, qwen3_moe); 0: dense
    experts_per_token: int = ranged(2, gt=0)  # top-k: the experts each token is routed to
    moe_mlp_dim: int = ranged(0, ge=0)  # each expert's hidden width (Qwen3-MoE's moe_intermediate_size); 0: mlp_dim
    router_renormalize: bool = True  # the top-k router weights are rescaled to sum to 1 (Mixtral always; Qwen3-MoE's norm_topk_prob)
    router_aux_coef: float = ranged(0.001, ge=0)  # weight of the load-balancing loss E·Σ_i f_i·P_i (HF's router_aux_loss_coef)
    router_z_coef: float = ranged(0.0, ge=0)  # weight of the router z-loss mean(logsumexp(router logits)²) (ST-MoE)
    tie_embeddings: bool = False
    dtype: ComputeDtype = "bfloat16"  # compute dtype; logits and loss are always f32
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    scan_layers: bool = True
    remat: Remat = "none"
    attention: Literal["xla", "cudnn", "splash"] = "xla"  # splash: the Pallas TPU kernel (interpret mode off a TPU)
    scalar_head: bool = False  # adds a [B, T] scalar output (reward / value models)
    init_std: float = ranged(0.02, ge=0)


@dataclass
class SourceConfig:
    """One training source: a file, glob or `builtin:` corpus, with its mixture weight."""

    path: str = ""
    weight: float = ranged(1.0, gt=0)
    format: Literal["auto", "jsonl", "parquet", "arrayrecord", "text"] = "auto"
    text_key: str = "text"
    rows: str = ""  # a slice of the source's records, "start:stop"; ints or percents ("0:90%", "90%:")


@dataclass
class DataConfig:
    """Where the tokens come from and how they are packed into rows."""

    train_files: list[SourceConfig] = field(default_factory=list)
    eval_files: list[SourceConfig] = field(default_factory=list)
    seqio_task: str = ""  # a registered seqio Task or Mixture (needs the [seqio] extra)
    seq_len: int = ranged(512, gt=0)
    on_bad_record: Literal["error", "skip"] = "error"  # skip: skipped records are counted in metrics
    pair_truncation: Literal["skip", "left"] = "skip"  # rm/dpo: a pair over seq_len is a bad record, or its prompt is cut from the left (replies whole)
    shuffle: bool = True
    add_bos: bool = True
    add_eos: bool = True
    chat_template: ChatTemplate = "default"  # sft/rm/dpo/ppo/grpo; hf: the HF tokenizer's own
    prefetch: int = ranged(4, ge=0)  # batches prepared ahead of the step in a background thread
    worker_count: int = ranged(0, ge=0)  # >0: Grain multiprocessing workers for tokenization


@dataclass
class TokenizerConfig:
    """Tokenizer to load, or to train (sentencepiece) when `path` does not exist yet."""

    path: str = ""  # .model file or HF tokenizer dir; "": run_dir/tokenizer.model
    vocab_size: int = ranged(4096, ge=260)  # 256 byte pieces + unk, bos, eos + at least one merge
    model_type: Literal["bpe", "unigram"] = "bpe"
    max_sentences: int = ranged(200000, gt=0)
    character_coverage: float = ranged(0.9995, gt=0, le=1)


@dataclass
class HarnessConfig:
    """train.eval_harness: lm-evaluation-harness tasks scored on the live params during training (the [eval] extra)."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task names or globs; empty: off
    every: int = ranged(0, ge=0)  # steps between two evaluations; 0: at the last step only (always at the last)
    include_path: str = ""  # a dir of task YAMLs (lm-eval's --include_path)
    limit: int = ranged(0, ge=0)  # examples per task; 0: all
    num_fewshot: int = ranged(0, ge=0)
    batch_size: int = ranged(16, gt=0)  # generation rows; scoring batches by tokens
    apply_chat_template: bool = False  # prompts rendered by the run's data.chat_template (lm-eval's --apply_chat_template)
    fewshot_as_multiturn: bool = False  # few-shot examples as earlier turns (needs apply_chat_template)


Tracker = Literal["wandb", "mlflow"]


@dataclass
class TrainConfig:
    """Optimizer, schedule, loop lengths and logging."""

    steps: int = ranged(1000, ge=0)
    seed: int = 0
    global_batch_size: int = ranged(32, gt=0)
    grad_accum_steps: int = ranged(1, gt=0)
    learning_rate: float = ranged(3e-4, ge=0)  # < 0 would be gradient ascent
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = ranged(100, ge=0)
    decay_fraction: float = ranged(0.2, ge=0, le=1)  # wsd: share of steps spent decaying
    min_lr_ratio: float = ranged(0.1, ge=0, le=1)
    weight_decay: float = ranged(0.1, ge=0)
    b1: float = ranged(0.9, ge=0, lt=1)
    b2: float = ranged(0.95, ge=0, lt=1)
    eps: float = ranged(1e-8, gt=0)
    grad_clip: float = ranged(1.0, ge=0)
    z_loss: float = ranged(0.0, ge=0)
    loss_chunks: int = ranged(4, gt=0)  # pretrain/sft: LM head + loss over up to this many chunks of each row (a divisor of T); the [B, T, V] logits never exist whole
    log_every: int = ranged(10, gt=0)
    eval_every: int = ranged(0, ge=0)  # 0: no periodic eval
    eval_steps: int = ranged(10, gt=0)
    max_consecutive_nonfinite: int = ranged(5, gt=0)
    init_from: str = ""  # maxlm run dir / checkpoint, a maxlm import of an HF model, or a config YAML (trained first)
    eval_harness: HarnessConfig = field(default_factory=HarnessConfig)
    trackers: list[Tracker] = field(default_factory=list)  # experiment trackers fed the metrics.jsonl records (extras wandb, mlflow)


@dataclass
class RewardModelConfig:
    """task: rm, a Bradley-Terry reward model on preference pairs."""

    center_coef: float = ranged(0.0, ge=0)  # + center_coef·(r_c + r_r)²: keeps rewards near zero mean
    pooling: Literal["last", "mean"] = "last"  # last: the head at the reply's last token (HF ForSequenceClassification); mean: over the reply's tokens


@dataclass
class PreferenceConfig:
    """task: dpo and its family; sigmoid/ipo/hinge compare with the frozen `train.init_from` model."""

    kind: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = "sigmoid"  # sigmoid: DPO (label_smoothing > 0: cDPO)
    beta: float = ranged(0.1, ge=0)  # > 0 but for orpo (see validate), where it weighs the odds-ratio term (ORPO's lambda)
    label_smoothing: float = ranged(0.0, ge=0, lt=0.5)  # 0.5 flips no label yet learns nothing; above it flips the preference
    gamma: float = ranged(0.5, ge=0)  # simpo's target margin
    precompute_ref: bool = False  # score every example under the reference once at the start, then free it


@dataclass
class RLConfig:
    """task: ppo | grpo: sampled rollouts, rewards, advantages, several clipped updates per rollout batch."""

    group_size: int = ranged(8, gt=0)  # completions per prompt; train.global_batch_size counts prompts
    max_prompt_len: int = ranged(128, gt=0)  # prompts are left-padded to this (one compile); longer ones are skipped
    max_new_tokens: int = ranged(32, gt=0)
    temperature: float = ranged(1.0, gt=0)  # the training forward divides logits by it too; greedy rollouts (0) have no policy to train
    top_k: int = ranged(0, ge=0)  # the sampler's filter only: the training forward keeps the full softmax (see tis_cap)
    top_p: float = ranged(1.0, gt=0, le=1)
    verifier: Verifier = "arithmetic_exact"  # unused when reward_model is set
    reward_model: str = ""  # a task: rm run (dir or checkpoint): its score is the reward, instead of the verifier's
    kl_coef: float = ranged(0.04, ge=0)  # KL to the frozen train.init_from model; in the loss or the per-token rewards: rl.kl_in
    kl_estimator: Literal["k1", "k3", "abs", "mse"] = "k3"
    kl_target: float = ranged(0.0, ge=0)  # > 0 (rl.kl_in reward): adapt kl_coef (Ziegler et al. 2019) toward this KL summed over a completion
    kl_horizon: float = ranged(10000.0, gt=0)  # ppo: the adaptive controller's horizon, in completions
    advantage: Literal["group", "rloo", "reinforce_pp"] = "group"  # grpo's baseline (losses/rl.py ADVANTAGE_KINDS); ppo: GAE
    scale_rewards: Literal["group", "batch", "none"] = "group"  # grpo: divide by the group's / batch's reward std, or not (Dr. GRPO)
    loss_agg: Literal["token_mean", "sequence_mean", "constant"] = "token_mean"  # the policy loss's mean (losses/rl.py aggregation_weights)
    clip_eps_low: float = ranged(0.2, gt=0, lt=1)  # the ratio is clipped to [1 - low, 1 + high]
    clip_eps_high: float = ranged(0.2, gt=0)  # DAPO's clip-higher: 0.28; GSPO (importance_ratio: sequence): 3e-4 / 4e-4
    importance_ratio: Literal["token", "sequence"] = "token"  # sequence: GSPO's length-normalized sequence ratio
    dynamic_sampling: bool = False  # grpo (DAPO): drop groups of equal rewards, refill from further prompts
    max_sampling_rounds: int = ranged(4, gt=0)  # dynamic_sampling: batches of prompts sampled at most per step
    overlong_buffer: int = ranged(0, ge=0)  # DAPO's soft overlong punishment over the last this many of max_new_tokens; 0: off
    overlong_penalty: float = ranged(1.0, ge=0)  # the punishment of a completion that fills max_new_tokens
    epochs: int = ranged(1, gt=0)  # passes over each rollout batch
    minibatches: int = ranged(1, gt=0)  # optimizer updates per pass; the rollout rows split evenly
    gamma: float = ranged(1.0, ge=0, le=1)  # ppo: discount
    lam: float = ranged(0.95, ge=0, le=1)  # ppo: GAE lambda
    vf_coef: float = ranged(0.1, ge=0)  # ppo: weight of the value loss (the value head shares the policy's trunk)
    value_clip_eps: float = ranged(0.2, gt=0)  # ppo
    whiten_advantages: bool = True  # ppo
    kl_in: Literal["reward", "loss"] = per_task("reward", grpo="loss")  # where kl_coef x KL to the reference goes: per-token rewards or the loss
    tis_cap: float = ranged(0.0, ge=0)  # > 0: truncated importance sampling, min(p_train / p_sampler, tis_cap) on each token's policy term
    target_approx_kl: float = ranged(0.0, ge=0)  # > 0: skip a rollout batch's remaining updates once a minibatch's approx KL exceeds it
    value_warmup_steps: int = ranged(0, ge=0)  # ppo: the first N steps train the value head alone; the policy stays as it starts


@dataclass
class CheckpointConfig:
    """Orbax checkpointing cadence and retention."""

    interval_steps: int = ranged(100, gt=0)
    keep: int = ranged(3, gt=0)
    async_save: bool = True


@dataclass
class MeshConfig:
    """Device mesh shape; one axis may be -1 to take the remaining devices (checked in validate)."""

    data: int = -1
    fsdp: int = 1
    expert: int = 1  # shards the experts of an MoE model (and, like data, the batch)
    context: int = 1  # shards the sequence: each device holds T / context of every row's activations (context parallelism)
    tensor: int = 1


@dataclass
class SampleConfig:
    """Text sampled from the trained model at the end of a run."""

    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = ranged(32, gt=0)
    temperature: float = ranged(0.8, ge=0)  # 0: greedy
    top_k: int = ranged(40, ge=0)  # 0: no top-k filter
    top_p: float = ranged(1.0, gt=0, le=1)


LoraTarget = Literal["q", "k", "v", "o", "gate", "up", "down"]  # the projections of maxlm/models/layers.py, by logical name


@dataclass
class LoraConfig:
    """Low-rank adapters on a frozen base (train.init_from's weights, else the seed's init); rank 0: off, every weight trains."""

    rank: int = ranged(0, ge=0)
    alpha: float = ranged(16.0, gt=0)  # the adapter's output is scaled by alpha / rank, as PEFT's LoRA
    dropout: float = ranged(0.0, ge=0, lt=1)  # on each adapter's input, in training updates only (PEFT's lora_dropout)
    targets: list[LoraTarget] = field(default_factory=lambda: ["q", "k", "v", "o"])
    # How the frozen base is held: as model.param_dtype; cast to bfloat16; or its seven projections of every layer
    # quantized, dequantized as they are used (models/quant.py): int8 with one f32 scale per output channel, or nf4
    # (QLoRA's 4-bit NormalFloat) with one f32 absmax per nf4_block consecutive inputs of an output channel.
    base_dtype: Literal["param_dtype", "bfloat16", "int8", "nf4"] = "param_dtype"
    nf4_block: int = ranged(64, gt=0)  # must divide every projection's inputs (hidden_size, num_heads · head_dim, mlp_dim)


@dataclass
class ExportConfig:
    """Hugging Face export at the end of a run."""

    hf_dir: str = ""  # "": no export; relative paths are inside run_dir


@dataclass
class Config:
    """A whole run: everything `maxlm train` reads."""

    run_dir: str = "runs/default"
    task: Task = "pretrain"
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
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class Replaced:
    """A key that no longer exists: the keys that took its value, and a hint."""

    by: tuple[str, ...]
    hint: str


# A config a user writes with one of these keys is refused, naming the new keys; a checkpoint's saved
# config (written by an older maxlm) is read with the old value moved to them (load.from_dict).
REPLACED_KEYS = {
    "rl.clip_eps": Replaced(("rl.clip_eps_low", "rl.clip_eps_high"), "set both to the old value for the same clipping"),
}


class Inconsistent(MaxlmError):
    """Values of several keys that do not fit together; `keys` lets the loader name where they came from."""

    def __init__(self, message: str, *keys: str):
        super().__init__(message)
        self.keys = keys


def choices(t: Any) -> tuple[str, ...]:
    """Returns the names a `Literal[...]` type allows."""
    return tuple(str(c) for c in typing.get_args(t))


def check_ranges(obj: Any, prefix: str = "") -> None:
    """Raises MaxlmError for the first field of a dataclass tree that lies outside its stated range."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        bad = out_of_range(key, value, f.metadata.get("range"))
        if bad:
            raise MaxlmError(bad)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if dataclasses.is_dataclass(item):
                check_ranges(item, f"{key}[{i}]." if isinstance(value, list) else key + ".")


def validate(cfg: Config) -> None:
    """Raises MaxlmError for values out of their field's range, and for well-typed values that are inconsistent."""
    check_ranges(cfg)
    m, t, d = cfg.model, cfg.train, cfg.data
    if m.num_heads % m.num_kv_heads:
        raise Inconsistent(f"model.num_heads ({m.num_heads}) must be a multiple of model.num_kv_heads ({m.num_kv_heads})",
                           "model.num_kv_heads", "model.num_heads")
    if m.head_dim == 0 and m.hidden_size % m.num_heads:
        raise Inconsistent(f"model.hidden_size ({m.hidden_size}) must divide by model.num_heads ({m.num_heads}) or set model.head_dim",
                           "model.hidden_size", "model.num_heads")
    _check_family_switches(m)
    if t.global_batch_size % t.grad_accum_steps:
        raise Inconsistent(
            f"train.global_batch_size ({t.global_batch_size}) must divide by train.grad_accum_steps ({t.grad_accum_steps})",
            "train.global_batch_size", "train.grad_accum_steps",
        )
    if d.seq_len > m.max_seq_len:
        raise Inconsistent(f"data.seq_len ({d.seq_len}) exceeds model.max_seq_len ({m.max_seq_len})", "data.seq_len", "model.max_seq_len")
    # ipo divides by beta and the others scale the margin by it; orpo's beta only weighs a term, so 0 is allowed
    if cfg.dpo.beta == 0 and cfg.dpo.kind != "orpo":
        raise Inconsistent(f"dpo.beta must be > 0 for dpo.kind {cfg.dpo.kind} (>= 0 only for orpo), got {cfg.dpo.beta}", "dpo.beta", "dpo.kind")
    if cfg.lora.rank and not cfg.lora.targets:
        raise Inconsistent(f"lora.rank {cfg.lora.rank} needs at least one of lora.targets (q, k, v, o, gate, up, down)", "lora.targets", "lora.rank")
    if cfg.lora.rank and len(set(cfg.lora.targets)) != len(cfg.lora.targets):
        raise Inconsistent(f"lora.targets names a projection twice: {cfg.lora.targets}", "lora.targets")
    expert_targets = sorted(set(cfg.lora.targets) & {"gate", "up", "down"}) if cfg.model.num_experts else []
    if cfg.lora.rank and expert_targets and cfg.lora.dropout:
        # as PEFT, whose adapters on expert parameters (target_parameters) refuse lora_dropout
        raise Inconsistent(f"lora.dropout {cfg.lora.dropout}: adapters on an MoE model's experts (lora.targets {expert_targets}) take no "
                           "dropout; set lora.dropout 0 or target the attention (q, k, v, o) only", "lora.dropout", "lora.targets")
    if not cfg.train.init_from:  # else the model is init_from's, checked once read (train/state.py resolve_init_from)
        check_quantized_base(cfg)
    mesh = cfg.mesh
    sizes = [mesh.data, mesh.fsdp, mesh.expert, mesh.context, mesh.tensor]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise Inconsistent(f"mesh: at most one axis may be -1 and the others must be >= 1; got data={mesh.data} fsdp={mesh.fsdp} "
                           f"expert={mesh.expert} context={mesh.context} tensor={mesh.tensor}",
                           "mesh.data", "mesh.fsdp", "mesh.expert", "mesh.context", "mesh.tensor")
    if mesh.context > 1 and cfg.data.seq_len % mesh.context:
        raise Inconsistent(f"mesh.context={mesh.context} must divide data.seq_len={cfg.data.seq_len} (each device holds an equal part of every row)",
                           "mesh.context", "data.seq_len")
    _check_experts(m)


def check_quantized_base(cfg: Config) -> None:
    """Raises Inconsistent when lora.base_dtype int8 / nf4 cannot hold this model's projections."""
    lo, m = cfg.lora, cfg.model
    if not lo.rank or lo.base_dtype not in ("int8", "nf4"):
        return
    if lo.base_dtype != "nf4":
        return
    h = head_dim(m)
    # The MLP's down projection takes mlp_dim inputs; an MoE's experts' take expert_dim (its gate and up: hidden_size).
    down = (("model.moe_mlp_dim" if m.moe_mlp_dim else "model.mlp_dim"), expert_dim(m)) if m.num_experts else ("model.mlp_dim", m.mlp_dim)
    # (its keys, all inputs flattened, the last input dim: the one two codes a byte pack along, which projections)
    inputs = [("model.hidden_size", m.hidden_size, m.hidden_size, "q, k, v, gate, up"),
              ("model.num_heads, model.head_dim", m.num_heads * h, h, "o"), (down[0], down[1], down[1], "down")]
    for keys, n, last, which in inputs:
        if last % 2:
            raise Inconsistent(f"lora.base_dtype nf4 packs two 4-bit codes a byte along a projection's last input dim: {which}'s is "
                               f"{last} ({keys}), which must be even", "lora.base_dtype", *keys.split(", "))
        if n % lo.nf4_block:
            raise Inconsistent(f"lora.nf4_block ({lo.nf4_block}) must divide the inputs of every projection for lora.base_dtype nf4: "
                               f"{which} take {n} ({keys}); pick a block that divides {n}", "lora.nf4_block", *keys.split(", "))


GEMMA = ("gemma2", "gemma3")


def _family_switches(m: ModelConfig) -> list[tuple[str, Any, bool, tuple[str, ...], str]]:
    """Returns (key, value, is it on, the families whose HF classes have it on, what it is) for each family-bound switch."""
    return [
        ("qk_norm", m.qk_norm, m.qk_norm, ("qwen3", "qwen3_moe", "gemma3"), "q/k norms"),
        ("sliding_window", m.sliding_window, m.sliding_window > 0, ("mistral", "mixtral", *GEMMA), "a sliding window"),
        ("global_every", m.global_every, m.global_every > 0, GEMMA, "local and global layers"),
        ("rope_local_theta", m.rope_local_theta, m.rope_local_theta > 0, ("gemma3",), "a RoPE base of its own on local layers"),
        ("query_pre_attn_scalar", m.query_pre_attn_scalar, m.query_pre_attn_scalar > 0, GEMMA, "query_pre_attn_scalar"),
        ("attn_softcap", m.attn_softcap, m.attn_softcap > 0, ("gemma2",), "attention-logit soft-capping"),
        ("post_norms", m.post_norms, m.post_norms, GEMMA, "norms after attention and MLP"),
        ("norm_offset", m.norm_offset, m.norm_offset, GEMMA, "(1 + weight) norms"),
        ("embed_scale", m.embed_scale, m.embed_scale, GEMMA, "scaled embeddings"),
        ("mlp_activation", m.mlp_activation, m.mlp_activation == "gelu_tanh", GEMMA, "a GELU-tanh MLP"),
        ("final_softcap", m.final_softcap, m.final_softcap > 0, GEMMA, "final-logit soft-capping"),
    ]


# (switch, family) pairs where HF's classes make the switch optional rather than always on.
OPTIONAL = {("sliding_window", "mistral"), ("sliding_window", "mixtral"), ("attn_softcap", "gemma2"), ("final_softcap", "gemma2"), ("final_softcap", "gemma3")}


def _check_family_switches(m: ModelConfig) -> None:
    """Raises Inconsistent when a switch is on for a family whose HF classes lack it, or off for one that always has it.

    Each HF architecture fixes these (Gemma's classes always hold post-norms, Llama's never do): a
    mismatch would train a model that could not be exported.
    """
    for key, value, on, families, what in _family_switches(m):
        shown = str(value).lower() if isinstance(value, bool) else value
        if on and m.family not in families:
            raise Inconsistent(f"model.{key}: {shown} needs model.family {' or '.join(families)} (a {m.family} model has no {what} in Hugging Face)",
                               f"model.{key}", "model.family")
        if not on and m.family in families and (key, m.family) not in OPTIONAL:
            want = "true" if isinstance(value, bool) else "gelu_tanh" if key == "mlp_activation" else "> 0"
            raise Inconsistent(f"model.family {m.family} needs model.{key}: {want} (its Hugging Face classes always have {what})",
                               f"model.{key}", "model.family")
    if m.qkv_bias and m.family in ("mistral", "mixtral", *GEMMA):
        raise Inconsistent(f"model.qkv_bias: true is not available for model.family {m.family} (maxlm maps no attention biases for it)",
                           "model.qkv_bias", "model.family")
    if m.attn_softcap and m.attention == "cudnn":
        raise Inconsistent("model.attn_softcap needs model.attention xla (cuDNN's fused attention has no soft-capping)",
                           "model.attn_softcap", "model.attention")


MOE = ("mixtral", "qwen3_moe")


def _check_experts(m: ModelConfig) -> None:
    """Raises Inconsistent when the expert keys do not fit the family (HF's MoE classes route every layer; dense ones none)."""
    if m.num_experts and m.family not in MOE:
        raise Inconsistent(f"model.num_experts: {m.num_experts} needs model.family {' or '.join(MOE)} (a {m.family} model has no experts in Hugging Face)",
                           "model.num_experts", "model.family")
    if not m.num_experts and m.family in MOE:
        raise Inconsistent(f"model.family {m.family} needs model.num_experts > 0 (its Hugging Face classes are mixtures of experts)",
                           "model.num_experts", "model.family")
    if m.num_experts and m.experts_per_token > m.num_experts:
        raise Inconsistent(f"model.experts_per_token ({m.experts_per_token}) exceeds model.num_experts ({m.num_experts})",
                           "model.experts_per_token", "model.num_experts")
    if m.family == "mixtral" and not m.router_renormalize:
        raise Inconsistent("model.family mixtral needs model.router_renormalize: true (Mixtral's router always rescales its top-k weights)",
                           "model.router_renormalize", "model.family")
    if m.family == "mixtral" and m.moe_mlp_dim not in (0, m.mlp_dim):
        raise Inconsistent(f"model.moe_mlp_dim ({m.moe_mlp_dim}) must be 0 or model.mlp_dim ({m.mlp_dim}) for family mixtral "
                           "(its experts are intermediate_size wide)", "model.moe_mlp_dim", "model.mlp_dim")


def expert_dim(m: ModelConfig) -> int:
    """Returns each expert's hidden width."""
    return m.moe_mlp_dim or m.mlp_dim


def sliding_layers(m: ModelConfig) -> tuple[bool, ...]:
    """Returns, per layer, whether it attends through the sliding window (every n-th layer is global with global_every n)."""
    return tuple(m.sliding_window > 0 and (m.global_every == 0 or (i + 1) % m.global_every != 0) for i in range(m.num_layers))


def head_dim(m: ModelConfig) -> int:
    """Returns the per-head width."""
    return m.head_dim or m.hidden_size // m.num_heads
