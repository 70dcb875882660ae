"""`maxlm eval win-rate`: greedy answers of two policies judged by a reward model's scalar head."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from maxlm.cli import main as cli_main
from maxlm.data import chat
from maxlm.errors import MaxlmError
from maxlm.eval.win_rate import win_rate
from maxlm.infer.scoring import Scorer

PROMPTS = [{"prompt": "Wrap the text"}, {"prompt": "Fill the paragraph please"}, {"question": "What is 2 + 3?", "answer": "#### 5"},
           {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Dedent this"}]}]


def test_a_model_against_itself_wins_exactly_half(models, runs, write_jsonl, capsys):
    path = write_jsonl("prompts.jsonl", PROMPTS)
    assert cli_main(["eval", "win-rate", "--rm", str(runs["rm"]), "--a", str(runs["sft"]), "--b", str(runs["sft"]),
                     "--prompts", path, "--max-new-tokens", "8"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["win_rate"] == 0.5 and out["ties"] == out["n"] == 4 and out["reward_a"] == out["reward_b"]
    assert all(e["a"] == e["b"] for e in out["examples"])


def test_rewards_are_the_rms_scores_of_each_answer(models, write_jsonl):
    rm, a, b = models["rm"], models["sft"], models["pretrain"]  # B is prompted with plain text
    result = win_rate(rm, a, b, write_jsonl("prompts.jsonl", PROMPTS), max_new_tokens=8, rows="1:")
    assert result["n"] == 3 and result["wins"] + result["ties"] + result["losses"] == 3
    tok = rm.tokenizer
    ex = result["examples"]
    prompts = [[{"role": "user", "content": "Fill the paragraph please"}], [{"role": "user", "content": "What is 2 + 3?"}],
               PROMPTS[3]["prompt"]]
    ids = [chat.encode_completion(tok, "default", p, e[k])[0] for p, e in zip(prompts, ex) for k in ("a", "b")]
    r = Scorer(rm).rewards(ids)
    np.testing.assert_allclose([(e["reward_a"], e["reward_b"]) for e in ex], r.reshape(-1, 2), rtol=1e-5, atol=1e-6)
    assert result["reward_a"] == pytest.approx(r[0::2].mean(), rel=1e-5)
    wins = np.sum(r[0::2] > r[1::2]) + 0.5 * np.sum(r[0::2] == r[1::2])
    assert result["win_rate"] == pytest.approx(wins / 3)
    assert len(set(np.round(r, 5))) > 1  # the RM is not constant, so the comparison means something


def test_the_judge_needs_a_scalar_head(models, write_jsonl):
    with pytest.raises(MaxlmError, match=r"--rm: not a reward model \(it has no scalar head\)"):
        win_rate(models["sft"], models["sft"], models["sft"], write_jsonl("p.jsonl", PROMPTS))


def test_the_judge_must_be_a_reward_model_not_a_ppo_value_head(models, write_jsonl):
    # A ppo run carries a scalar head too: its value head, which is no judge of replies.
    rm = models["rm"]
    ppo = dataclasses.replace(rm, config=dataclasses.replace(rm.config, task="ppo"))
    assert ppo.config.model.scalar_head
    with pytest.raises(MaxlmError, match="a ppo run's scalar head is its value head"):
        win_rate(ppo, models["sft"], models["sft"], write_jsonl("p.jsonl", PROMPTS))
