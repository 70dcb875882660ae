"""The task table: one Task per `task:` name, each answering the run's questions once."""

from __future__ import annotations

import dataclasses

import pytest

from maxlm.config import Config, ModelConfig, PreferenceConfig, RLConfig, TrainConfig
from maxlm.config.schema import Task as TaskName, choices
from maxlm.errors import MaxlmError
from maxlm.tasks import TASKS, has_reward_head
from maxlm.train.run import train


def test_every_task_name_has_one_task():
    assert tuple(TASKS) == choices(TaskName)
    assert all(t.name == name for name, t in TASKS.items())


def test_plain_text_is_pretrain_alone():
    assert [n for n, t in TASKS.items() if not t.chat] == ["pretrain"]


@pytest.mark.parametrize("task, scalar_head, reward", [
    ("rm", True, True), ("ppo", True, False), ("sft", False, False), ("grpo", False, False), ("dpo", True, True),
])
def test_a_reward_head_is_a_scalar_head_that_is_not_ppos_value_head(task, scalar_head, reward):
    assert has_reward_head(Config(task=task, model=ModelConfig(scalar_head=scalar_head))) is reward


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge"])
def test_dpo_with_a_reference_and_no_init_from_is_refused_before_any_work(tmp_path, kind):
    cfg = Config(task="dpo", run_dir=str(tmp_path / "run"), dpo=PreferenceConfig(kind=kind))
    with pytest.raises(MaxlmError, match=f"dpo.kind={kind} .*set train.init_from"):
        train(cfg, log=lambda *_: None)
    assert not (tmp_path / "run").exists()  # nothing written: not even the resolved config


@pytest.mark.parametrize("kind", ["simpo", "orpo"])
def test_reference_free_dpo_needs_no_init_from(kind):
    cfg = Config(task="dpo", dpo=PreferenceConfig(kind=kind))
    TASKS["dpo"].check(cfg)
    assert not TASKS["dpo"].needs_reference(cfg)


def test_dpo_from_a_run_passes_the_check_and_compares_with_it():
    cfg = Config(task="dpo", train=TrainConfig(init_from="runs/sft"))
    TASKS["dpo"].check(cfg)
    assert TASKS["dpo"].needs_reference(cfg)
    # A reference scored up front rides in the batches: the step takes no reference model.
    assert not TASKS["dpo"].needs_reference(dataclasses.replace(cfg, dpo=PreferenceConfig(precompute_ref=True)))


@pytest.mark.parametrize("task", ["ppo", "grpo"])
def test_rl_config_is_checked_by_its_task_before_any_work(tmp_path, task):
    cfg = Config(task=task, run_dir=str(tmp_path / "run"), rl=RLConfig(group_size=0))
    with pytest.raises(MaxlmError, match="rl.group_size must be > 0, got 0"):
        train(cfg, log=lambda *_: None)
    cfg = Config(task=task, train=TrainConfig(global_batch_size=3), rl=RLConfig(group_size=1, minibatches=2))
    with pytest.raises(MaxlmError, match="rollout rows must divide by rl.minibatches"):
        TASKS[task].check(cfg)
    assert not (tmp_path / "run").exists()


def test_rl_switches_that_do_not_fit_the_task_are_refused_before_any_work():
    with pytest.raises(MaxlmError, match=r"rl.value_warmup_steps \(3\) warms up a value head: task grpo has none"):
        TASKS["grpo"].check(Config(task="grpo", rl=RLConfig(value_warmup_steps=3)))
    TASKS["ppo"].check(Config(task="ppo", rl=RLConfig(value_warmup_steps=3)))
    for task in ("ppo", "grpo"):
        with pytest.raises(MaxlmError, match="rl.kl_target .* adapts the KL penalty in the rewards, but rl.kl_in is loss"):
            TASKS[task].check(Config(task=task, rl=RLConfig(kl_target=1.0, kl_in="loss")))
        cfg = Config(task=task, rl=RLConfig(kl_target=1.0, kl_coef=0.0, kl_in="reward"))
        TASKS[task].check(cfg)
        assert TASKS[task].needs_reference(cfg)  # the adapted coefficient starts at 0 but moves


@pytest.mark.parametrize("task, rl, message", [
    ("ppo", dict(advantage="rloo"), "rl.advantage=rloo is a grpo choice; task ppo's advantages are GAE"),
    ("ppo", dict(scale_rewards="none"), "rl.scale_rewards=none is a grpo choice"),
    ("ppo", dict(dynamic_sampling=True), "rl.dynamic_sampling=True is a grpo choice"),
    ("grpo", dict(advantage="reinforce_pp", scale_rewards="batch"), "rl.scale_rewards=batch does not apply to rl.advantage=reinforce_pp"),
    ("grpo", dict(advantage="rloo", group_size=1), "rl.advantage=rloo needs rl.group_size >= 2"),
    ("grpo", dict(dynamic_sampling=True, group_size=1), "rl.dynamic_sampling drops groups of equal rewards"),
    ("grpo", dict(overlong_buffer=33), r"rl.overlong_buffer \(33\) must be <= rl.max_new_tokens \(32\)"),
    ("ppo", dict(overlong_buffer=33), r"rl.overlong_buffer \(33\) must be <= rl.max_new_tokens \(32\)"),
])
def test_rl_menu_choices_that_do_not_fit_are_refused_naming_the_keys(tmp_path, task, rl, message):
    cfg = Config(task=task, run_dir=str(tmp_path / "run"), rl=RLConfig(**rl))
    with pytest.raises(MaxlmError, match=message):
        train(cfg, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_the_rl_menu_choices_that_fit_pass_the_check():
    TASKS["grpo"].check(Config(task="grpo", rl=RLConfig(advantage="reinforce_pp", loss_agg="constant", dynamic_sampling=True,
                                                        importance_ratio="sequence", overlong_buffer=32)))
    TASKS["ppo"].check(Config(task="ppo", rl=RLConfig(loss_agg="sequence_mean", clip_eps_high=0.28, overlong_buffer=8)))
