"""The schema: choices live in the types, every numeric field states its range, the loader refuses values outside it."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from maxlm.config import (ChatTemplate, Config, PreferenceConfig, Remat, RLConfig, check_ranges, choices, field_range,
                          from_dict, load_config, to_dict, validate)
from maxlm.data.chat import TEMPLATES
from maxlm.errors import MaxlmError
from maxlm.models.llama import REMAT_POLICIES
from maxlm.losses.preference import PREFERENCE_KINDS
from maxlm.tasks.rl.verifiers import VERIFIERS
from maxlm.losses.rl import ADVANTAGE_KINDS, IMPORTANCE_RATIOS, KL_KINDS, LOSS_AGGREGATIONS, REWARD_SCALES

# (override, the range its message states); each value flips or breaks the objective, or fails later today
OUT_OF_RANGE = [
    ("train.learning_rate=-1e-4", ">= 0"), ("train.warmup_steps=-1", ">= 0"), ("train.steps=-1", ">= 0"),
    ("train.b1=1.0", "in [0, 1)"), ("train.b1=-0.1", "in [0, 1)"), ("train.b2=1", "in [0, 1)"),
    ("train.eps=0", "> 0"), ("train.grad_clip=-1", ">= 0"), ("train.weight_decay=-0.1", ">= 0"),
    ("train.min_lr_ratio=1.5", "in [0, 1]"), ("train.min_lr_ratio=-0.1", "in [0, 1]"),
    ("train.decay_fraction=2", "in [0, 1]"), ("train.z_loss=-1", ">= 0"),
    ("train.eval_every=-1", ">= 0"), ("train.eval_steps=0", "> 0"), ("train.max_consecutive_nonfinite=0", "> 0"),
    ("train.global_batch_size=0", "> 0"), ("train.grad_accum_steps=0", "> 0"), ("train.log_every=0", "> 0"),
    ("train.loss_chunks=0", "> 0"), ("checkpoint.interval_steps=0", "> 0"), ("checkpoint.keep=0", "> 0"),
    ("dpo.beta=-0.1", ">= 0"), ("dpo.label_smoothing=0.5", "in [0, 0.5)"), ("dpo.label_smoothing=-0.1", "in [0, 0.5)"),
    ("dpo.gamma=-1", ">= 0"), ("rm.center_coef=-1", ">= 0"),
    ("sample.temperature=-1", ">= 0"), ("sample.top_p=0", "in (0, 1]"), ("sample.top_p=1.5", "in (0, 1]"),
    ("sample.top_k=-1", ">= 0"), ("sample.max_new_tokens=0", "> 0"),
    ("rl.temperature=0", "> 0"), ("rl.temperature=-0.5", "> 0"), ("rl.top_p=2", "in (0, 1]"), ("rl.top_k=-2", ">= 0"),
    ("rl.clip_eps_low=0", "in (0, 1)"), ("rl.clip_eps_low=1", "in (0, 1)"), ("rl.clip_eps_high=0", "> 0"),
    ("rl.max_sampling_rounds=0", "> 0"), ("rl.overlong_buffer=-1", ">= 0"), ("rl.overlong_penalty=-1", ">= 0"), ("rl.lam=1.5", "in [0, 1]"), ("rl.gamma=-0.1", "in [0, 1]"),
    ("rl.kl_coef=-0.01", ">= 0"), ("rl.kl_target=-1", ">= 0"), ("rl.kl_horizon=0", "> 0"),
    ("rl.vf_coef=-1", ">= 0"), ("rl.value_clip_eps=0", "> 0"), ("rl.tis_cap=-1", ">= 0"),
    ("rl.target_approx_kl=-0.1", ">= 0"), ("rl.value_warmup_steps=-1", ">= 0"),
    ("model.rope_theta=0", "> 0"), ("model.norm_eps=0", "> 0"), ("model.init_std=-0.02", ">= 0"),
    ("model.hidden_size=0", "> 0"), ("model.num_layers=0", "> 0"), ("model.vocab_size=-1", ">= 0"),
    ("model.max_seq_len=0", "> 0"), ("model.rope_scaling.factor=0", "> 0"),
    ("data.prefetch=-1", ">= 0"), ("data.worker_count=-1", ">= 0"), ("data.seq_len=0", "> 0"),
    ("tokenizer.vocab_size=100", ">= 260"), ("tokenizer.character_coverage=0", "in (0, 1]"),
    ("tokenizer.character_coverage=1.01", "in (0, 1]"), ("tokenizer.max_sentences=0", "> 0"),
    ("train.learning_rate=.nan", ">= 0"),
]


@pytest.mark.parametrize("override, stated", OUT_OF_RANGE)
def test_a_value_outside_its_range_is_refused_naming_key_range_and_value(override, stated):
    key, value = override.split("=")
    with pytest.raises(MaxlmError) as e:
        load_config(None, [override])
    assert re.fullmatch(rf"override '{re.escape(override)}': {re.escape(key)} must be {re.escape(stated)}, got \S+", str(e.value)), str(e.value)


@pytest.mark.parametrize("override", ["train.learning_rate=0", "train.b1=0", "train.min_lr_ratio=1", "dpo.label_smoothing=0.49",
                                      "sample.temperature=0", "sample.top_p=1", "rl.lam=1", "rl.gamma=0", "tokenizer.vocab_size=260",
                                      "tokenizer.character_coverage=1", "train.eval_every=0", "data.prefetch=0"])
def test_the_bounds_themselves_are_accepted_where_the_range_is_closed(override):
    load_config(None, [override])


def test_dpo_beta_must_be_positive_except_for_orpo_whose_beta_only_weighs_a_term():
    for kind in ("sigmoid", "ipo", "hinge", "simpo"):
        with pytest.raises(MaxlmError, match=f"dpo.beta must be > 0 for dpo.kind {kind}"):
            load_config(None, ["task=dpo", f"dpo.kind={kind}", "dpo.beta=0"])
    assert load_config(None, ["task=dpo", "dpo.kind=orpo", "dpo.beta=0"]).dpo.beta == 0.0


def test_every_default_lies_in_its_range_and_every_numeric_field_states_one():
    check_ranges(Config())
    validate(Config())
    # the mesh's axes allow -1 (the remaining devices), a seed is any int
    unranged = {"MeshConfig.data", "MeshConfig.fsdp", "MeshConfig.expert", "MeshConfig.context", "MeshConfig.tensor", "TrainConfig.seed"}

    def numeric_fields(cls):
        for f in dataclasses.fields(cls):
            t = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(t):
                yield from numeric_fields(t)
            elif t in (int, float):
                yield cls, f.name

    missing = [f"{c.__name__}.{n}" for c, n in numeric_fields(Config) if field_range(c, n) is None]
    assert sorted(missing) == sorted(unranged)


def test_a_range_is_checked_on_configs_built_in_python_too():
    cfg = Config()
    cfg.rl.clip_eps_high = -0.2
    with pytest.raises(MaxlmError, match=r"^rl\.clip_eps_high must be > 0, got -0\.2$"):
        validate(cfg)


def test_a_replaced_key_is_refused_naming_the_keys_that_replace_it(tmp_path):
    stated = "rl.clip_eps is no longer a key; it is replaced by rl.clip_eps_low and rl.clip_eps_high"
    with pytest.raises(MaxlmError, match=f"^override 'rl.clip_eps=0.2': {stated}"):
        load_config(None, ["rl.clip_eps=0.2"])
    path = tmp_path / "old.yaml"
    path.write_text("task: grpo\nrl:\n  group_size: 4\n  clip_eps: 0.2\n")
    with pytest.raises(MaxlmError, match=f"^{re.escape(str(path))}:4: {stated}"):
        load_config(path)
    # A checkpoint saved by an older maxlm still loads: its value moves to the keys that replaced it.
    saved = to_dict(Config())
    del saved["rl"]["clip_eps_low"], saved["rl"]["clip_eps_high"]
    saved["rl"]["clip_eps"] = 0.3
    cfg = from_dict(saved)
    assert (cfg.rl.clip_eps_low, cfg.rl.clip_eps_high) == (0.3, 0.3) and "clip_eps" in saved["rl"]


def test_choices_are_read_from_the_types():
    hints = typing.get_type_hints(PreferenceConfig)
    assert choices(hints["kind"]) == ("sigmoid", "ipo", "hinge", "simpo", "orpo")
    with pytest.raises(MaxlmError, match=r"rl\.verifier must be one of arithmetic_exact, gsm8k_exact, format, sort_exact; got 'gsm8k'"):
        load_config(None, ["rl.verifier=gsm8k"])
    with pytest.raises(MaxlmError, match=r"task must be one of pretrain, sft, rm, dpo, ppo, grpo; got 'dop'; did you mean 'dpo'\?"):
        load_config(None, ["task=dop"])


def test_each_choice_type_names_exactly_what_its_registry_holds():
    """The schema sits below the registries, so it cannot import them; this keeps the two lists equal."""
    hints = {**{f"rl.{k}": v for k, v in typing.get_type_hints(RLConfig).items()},
             **{f"dpo.{k}": v for k, v in typing.get_type_hints(PreferenceConfig).items()}}
    assert set(choices(hints["rl.verifier"])) == set(VERIFIERS)
    assert set(choices(hints["rl.kl_estimator"])) == set(KL_KINDS)
    assert set(choices(hints["rl.advantage"])) == set(ADVANTAGE_KINDS)
    assert set(choices(hints["rl.scale_rewards"])) == set(REWARD_SCALES)
    assert set(choices(hints["rl.loss_agg"])) == set(LOSS_AGGREGATIONS)
    assert set(choices(hints["rl.importance_ratio"])) == set(IMPORTANCE_RATIOS)
    assert set(choices(hints["dpo.kind"])) == set(PREFERENCE_KINDS)
    assert set(choices(ChatTemplate)) == set(TEMPLATES) | {"hf"}
    assert set(choices(Remat)) == set(REMAT_POLICIES) | {"none"}


def test_a_quantized_lora_base_is_refused_where_it_cannot_hold_the_projections():
    nf4 = ["lora.rank=4", "lora.base_dtype=nf4"]
    # The default model: mlp_dim 688 = 43 · 16, which no block of 64 divides.
    with pytest.raises(MaxlmError, match=r"lora\.nf4_block \(64\) must divide the inputs of every projection for lora\.base_dtype nf4: "
                                         r"down take 688 \(model\.mlp_dim\); pick a block that divides 688"):
        load_config(None, nf4)
    assert load_config(None, [*nf4, "lora.nf4_block=16"]).lora.nf4_block == 16
    with pytest.raises(MaxlmError, match=r"o take 72 \(model\.num_heads, model\.head_dim\)"):
        load_config(None, [*nf4, "lora.nf4_block=16", "model.head_dim=18"])
    with pytest.raises(MaxlmError, match=r"packs two 4-bit codes a byte along a projection's last input dim: o's is 63 .*must be even"):
        load_config(None, [*nf4, "lora.nf4_block=1", "model.head_dim=63"])
    with pytest.raises(MaxlmError, match="lora.nf4_block must be > 0"):
        load_config(None, [*nf4, "lora.nf4_block=0"])
    assert load_config(None, ["lora.base_dtype=nf4"]).lora.rank == 0  # no adapters: the base is not held quantized
    moe = ["model.family=mixtral", "model.num_experts=4", "model.experts_per_token=2", "model.router_renormalize=true", "lora.rank=4"]
    # An MoE's experts are quantized too: their down projections take moe_mlp_dim inputs, not the dense mlp_dim.
    assert load_config(None, [*moe, "lora.base_dtype=int8"]).lora.base_dtype == "int8"
    qwen = ["model.family=qwen3_moe", "model.qk_norm=true", "model.num_experts=4", "model.experts_per_token=2", "lora.rank=4",
            "lora.base_dtype=nf4", "lora.nf4_block=16", "model.mlp_dim=64"]
    assert load_config(None, [*qwen, "model.moe_mlp_dim=32"]).model.moe_mlp_dim == 32
    with pytest.raises(MaxlmError, match=r"down take 40 \(model\.moe_mlp_dim\); pick a block that divides 40"):
        load_config(None, [*qwen, "model.moe_mlp_dim=40"])


def test_adapters_on_an_moe_models_experts_take_no_dropout():
    moe = ["model.family=mixtral", "model.num_experts=4", "model.experts_per_token=2", "model.router_renormalize=true", "lora.rank=4"]
    assert load_config(None, [*moe, "lora.targets=[q,gate,up,down]"]).lora.targets == ["q", "gate", "up", "down"]
    assert load_config(None, [*moe, "lora.targets=[q,v]", "lora.dropout=0.1"]).lora.dropout == 0.1  # attention only: dropout is fine
    with pytest.raises(MaxlmError, match=r"lora\.dropout 0\.1: adapters on an MoE model's experts \(lora\.targets \['down'\]\) take no dropout"):
        load_config(None, [*moe, "lora.targets=[q,down]", "lora.dropout=0.1"])
    # a dense model's mlp takes dropout as before
    assert load_config(None, ["lora.rank=4", "lora.targets=[q,down]", "lora.dropout=0.1"]).lora.dropout == 0.1
