"""GRPO end to end on a two-armed contextual bandit whose optimal policy is known: the run must reach it.

Each prompt has one rewarded reply ("Pick A" -> "3", "Pick B" -> "8", by the strict `sort_exact`
verifier: the reply must be that one item). A tiny SFT on uniformly random digits gives a start
that is right about one time in ten; GRPO from there must end greedy-right on both prompts and
sampled-right almost always. Two contexts rather than one arm: a reward scored against another
row's prompt, or an advantage landing on another group's rows, caps the run at one arm (0.5).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ARMS = {"Pick A": "3", "Pick B": "8"}
MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "mlp_dim": 64, "max_seq_len": 64, "dtype": "float32"}


def _train(config: dict, path: Path) -> list[dict]:
    """Runs `maxlm train` on config (written to path) and returns its metrics rows."""
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "maxlm.cli", "train", str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in (Path(config["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_grpo_reaches_the_optimal_policy_of_a_contextual_bandit(tmp_path):
    rng = random.Random(0)
    prompts = tmp_path / "pick.jsonl"
    # Alternating arms: the in-run eval's first 8 prompts hold both. The SFT reply is a random digit, the RL answer the arm's.
    prompts.write_text("".join(
        json.dumps({"prompt": p, "response": str(rng.randrange(10)), "answer": ARMS[p]}) + "\n"
        for p in [*ARMS] * 128
    ))
    sft = {
        "task": "sft", "run_dir": str(tmp_path / "sft"), "model": MODEL, "tokenizer": {"vocab_size": 280},
        "data": {"train_files": [str(prompts)], "seq_len": 64},
        "train": {"steps": 60, "global_batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 2, "log_every": 10},
        "checkpoint": {"interval_steps": 60},
    }
    _train(sft, tmp_path / "sft.yaml")
    steps = 100
    grpo = {
        "task": "grpo", "run_dir": str(tmp_path / "grpo"), "model": MODEL,
        "data": {"train_files": [str(prompts)], "eval_files": [str(prompts)], "seq_len": 64},
        # No KL: the optimum is the reward's alone. A learning rate of 1e-2 collapses both prompts onto one arm.
        "rl": {"group_size": 8, "max_prompt_len": 48, "max_new_tokens": 2, "temperature": 1.0, "verifier": "sort_exact", "kl_coef": 0.0},
        "train": {"init_from": sft["run_dir"], "steps": steps, "global_batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 1,
                  "schedule": "constant", "log_every": 1, "eval_every": steps, "eval_steps": 1},
        "checkpoint": {"interval_steps": steps},
    }
    rows = {r["step"]: r for r in _train(grpo, tmp_path / "grpo.yaml")}
    start = sum(rows[s]["reward_mean"] for s in range(1, 6)) / 5
    end = sum(rows[s]["reward_mean"] for s in range(steps - 9, steps + 1)) / 10
    assert start < 0.3, start  # the start is far from the optimum: about one reply in ten is the arm's
    assert rows[0]["eval_reward"] < 1.0
    assert rows[steps]["eval_reward"] == 1.0  # greedy: "3" after "Pick A" and "8" after "Pick B"
    assert end >= 0.9, end
