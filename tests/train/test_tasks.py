"""`maxlm train` with task: sft, rm and dpo on the shared hh-rlhf pairs, chained through init_from
(the way configs/rm_hh.yaml and dpo_hh.yaml start from configs/sft_hh.yaml), and `maxlm eval rm`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from maxlm.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def metrics(run_dir) -> list[dict]:
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def hh(shared_data) -> str:
    return str(shared_data / "preference" / "hh_rlhf_harmless_part1.jsonl.gz")


def write_config(path: Path, **cfg) -> str:
    base = {
        "base_config": str(REPO / "configs" / "models" / "tiny.yaml"),
        "tokenizer": {"vocab_size": 512},
        "data": {"seq_len": 256, "on_bad_record": "skip"},
        "train": {"global_batch_size": 8, "warmup_steps": 2, "log_every": 1},
        "checkpoint": {"interval_steps": 100},
        "mesh": {"data": -1},
    }
    for k, v in cfg.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in base else v
    path.write_text(yaml.safe_dump(base))
    return str(path)


@pytest.fixture(scope="module")
def sft_config(tmp_path_factory, hh) -> str:
    d = tmp_path_factory.mktemp("sft")
    return write_config(d / "sft.yaml", task="sft", run_dir=str(d / "run"), data={"train_files": [{"path": hh, "rows": "0:300"}]},
                        train={"steps": 12, "learning_rate": 1e-2})


def test_sft_trains_only_replies_and_loss_falls(sft_config):
    from maxlm.config import load_config
    from maxlm.train.run import train

    cfg = load_config(sft_config)
    train(cfg, log=lambda *_: None)
    rows = metrics(cfg.run_dir)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    # tokens_trained counts reply tokens only: far fewer than the tokens processed.
    assert 0 < rows[-1]["tokens_trained"] < 0.6 * 12 * 8 * 256


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, sft_config, hh) -> Path:
    """A reward model trained through the CLI from the SFT config."""
    d = tmp_path_factory.mktemp("rm")
    cfg = write_config(d / "rm.yaml", task="rm", run_dir=str(d / "rm"),
                       data={"train_files": [{"path": hh, "rows": "0:300"}], "eval_files": [{"path": hh, "rows": "300:360"}],
                             "pair_truncation": "left"},  # the rule eval rm reads pairs with
                       train={"steps": 8, "learning_rate": 3e-3, "init_from": sft_config, "eval_every": 8, "eval_steps": 20})
    assert cli_main(["train", cfg]) == 0
    return d / "rm"


def test_rm_from_sft_config_learns_and_eval_rm_prints_accuracy(rm_run, hh, capsys):
    rows = metrics(rm_run)
    assert {"accuracy", "margin", "chosen_reward", "rejected_reward"} <= set(rows[0])
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-6)  # a fresh scalar head scores every reply 0
    assert "eval_accuracy" in rows[-1]
    capsys.readouterr()
    assert cli_main(["eval", "rm", str(rm_run), "--data", hh, "--rows", "300:360"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from maxlm.data.records import read_records

    malformed = read_records(hh, "rm", "skip", rows="300:360")[1]  # the bad records of those rows
    # Every pair of the 60 is scored, the long ones with their prompt cut.
    assert out["n"] == 60 and out["skipped"] == malformed and out["truncated"] > 0 and 0.0 <= out["accuracy"] <= 1.0
    # The same pairs through the training loop's eval give the same accuracy.
    assert out["accuracy"] == pytest.approx(rows[-1]["eval_accuracy"], abs=1e-6)


def test_dpo_starts_at_log2_and_raises_margin_and_accuracy(tmp_path, sft_config, hh):
    cfg = write_config(tmp_path / "dpo.yaml", task="dpo", run_dir=str(tmp_path / "dpo"),
                       data={"train_files": [{"path": hh, "rows": "0:16"}], "shuffle": False},
                       dpo={"kind": "sigmoid", "beta": 0.5},
                       train={"steps": 10, "learning_rate": 1e-2, "init_from": sft_config, "schedule": "constant"})
    assert cli_main(["train", cfg]) == 0
    rows = metrics(tmp_path / "dpo")
    # Step 1: the policy is the reference, so every log-ratio is 0 and the loss is log 2.
    assert rows[0]["loss"] == pytest.approx(np.log(2.0), abs=1e-5)
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-5)
    late = rows[-3:]
    assert np.mean([r["margin"] for r in late]) > 0.5
    assert np.mean([r["accuracy"] for r in late]) > 0.8


def test_ppo_rewards_come_from_the_reward_model(tmp_path, sft_config, rm_run, hh):
    import jax.numpy as jnp

    from maxlm.config import load_config
    from maxlm.data import chat
    from maxlm.models.llama import causal_segment_mask
    from maxlm.models.params import bind
    from maxlm.infer.pretrained import from_pretrained
    from maxlm.tasks.rl.rollouts import Rollouts, load_prompts
    from maxlm.train.setup import services

    cfg_path = write_config(tmp_path / "ppo.yaml", task="ppo", run_dir=str(tmp_path / "ppo"),
                            data={"train_files": [{"path": hh, "rows": "0:40"}]},
                            rl={"reward_model": str(rm_run), "group_size": 2, "max_prompt_len": 200, "max_new_tokens": 8, "kl_coef": 0.05, "epochs": 2},
                            train={"steps": 2, "global_batch_size": 4, "learning_rate": 1e-3, "init_from": sft_config})
    assert cli_main(["train", cfg_path]) == 0
    rows = metrics(tmp_path / "ppo")
    assert {"reward_mean", "kl", "value_loss", "kl_coef"} <= set(rows[0]) and np.isfinite(rows[-1]["loss"])
    # The scores Rollouts hands to PPO are the RM's head at the last token of (prompt, completion)
    # rendered in the RM's own template, recomputed here on each sequence alone.
    cfg = load_config(str(tmp_path / "ppo" / "config.yaml"))
    policy = from_pretrained(tmp_path / "ppo")
    tok = policy.tokenizer
    roll = Rollouts(cfg, tok, policy.graphdef, load_prompts(cfg, tok, cfg.data.train_files), services(cfg, policy.mesh, print), value_head=True)
    _, _, texts, scores, _ = roll.sample(policy.params, [0, 1, 2], 7, 2, 1.0)
    rm = from_pretrained(rm_run)
    rm_tok = rm.tokenizer
    for i, (text, score) in enumerate(zip(texts, scores)):
        ids = chat.encode_completion(rm_tok, rm.config.data.chat_template, roll.prompts.prompts[i // 2], text)[0]
        model = bind(rm.graphdef, rm.params)
        x = jnp.asarray([ids], jnp.int32)
        hidden, _ = model.hidden(x, jnp.arange(len(ids))[None], causal_segment_mask(jnp.ones_like(x)))
        assert float(score) == pytest.approx(float(model.scores(hidden)[0, -1]), abs=1e-4)


def test_dpo_with_precomputed_reference_logps_matches_the_live_reference(tmp_path, sft_config, hh):
    runs = {}
    for precompute in (False, True):
        name = f"dpo_{precompute}"
        cfg = write_config(tmp_path / f"{name}.yaml", task="dpo", run_dir=str(tmp_path / name),
                           data={"train_files": [{"path": hh, "rows": "0:24"}], "eval_files": [{"path": hh, "rows": "24:40"}]},
                           dpo={"kind": "sigmoid", "beta": 0.5, "precompute_ref": precompute},
                           train={"steps": 4, "learning_rate": 1e-2, "init_from": sft_config, "eval_every": 4, "eval_steps": 2})
        assert cli_main(["train", cfg]) == 0
        runs[precompute] = metrics(tmp_path / name)
    assert len(runs[True]) == len(runs[False]) == 4
    for live, pre in zip(runs[False], runs[True]):
        for k in ("loss", "margin", "chosen_reward", "rejected_reward"):
            assert pre[k] == pytest.approx(live[k], rel=1e-4, abs=1e-5), k
    assert runs[False][-1]["eval_margin"] != 0.0
    assert runs[True][-1]["eval_margin"] == pytest.approx(runs[False][-1]["eval_margin"], rel=1e-4, abs=1e-5)
