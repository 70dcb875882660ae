"""`maxlm eval exact-match`: greedy completions from the one sampler, checked against gold answers."""

from __future__ import annotations

import json

import pytest

from maxlm.cli import main as cli_main
from maxlm.data import chat
from maxlm.errors import MaxlmError
from maxlm.eval.generation import exact, exact_match, answer_check

N = 8


def greedy_reply(model, prompt: str) -> str:
    """Returns the model's greedy reply to one user message, sampled on its own (no padding, no batch mates)."""
    tok = model.tokenizer
    stops = chat.stop_ids(tok, "default")
    row = model.generate([chat.encode_prompt(tok, "default", prompt)], N, stop_ids=stops)[0, -N:].tolist()
    return tok.decode(row[: min([row.index(t) for t in stops if t in row], default=N)])


def test_a_completion_equal_to_the_gold_counts_as_right(models, runs, write_jsonl, tmp_path, capsys):
    model = models["sft"]
    gold = greedy_reply(model, "Wrap the text")
    path = write_jsonl("qa.jsonl", [
        {"prompt": "Wrap the text", "answer": gold},
        {"prompt": "Fill the paragraph please", "answer": "certainly not this"},
        {"question": "What is 2 + 3?", "answer": "Add the numbers.\n#### 5"},  # gsm8k: the gold is 5
    ])
    result = exact_match(model, path, "exact", max_new_tokens=N, rows=":2", batch_size=2)
    assert result["accuracy"] == 0.5 and result["n"] == 2 and result["skipped"] == 0
    assert result["examples"][0] == {"prompt": "Wrap the text", "completion": gold, "gold": gold, "score": 1.0}
    assert result["examples"][1]["score"] == 0.0

    assert cli_main(["eval", "exact-match", str(runs["sft"]), "--data", path, "--verifier", "exact", "--max-new-tokens", str(N),
                     "--batch-size", "2", "--output", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [e["gold"] for e in printed["examples"]] == [gold, "certainly not this", "5"]
    third = printed["examples"][2]["completion"]
    assert printed["n"] == 3 and printed["accuracy"] == pytest.approx((1 + exact(third, "5")) / 3)
    assert (tmp_path / "out" / "results.md").read_text().startswith("# exact match (exact)")


def test_verifiers_and_bad_records_are_named(runs, write_jsonl, capsys):
    assert answer_check("gsm8k_exact")("so #### 1,200", "1200") == 1.0 and exact(" 7\n", "7") == 1.0
    with pytest.raises(MaxlmError, match="--verifier must be one of exact, arithmetic_exact, format, gsm8k_exact"):
        answer_check("exactly")
    path = write_jsonl("no_answer.jsonl", [{"prompt": "a", "answer": "b"}, {"prompt": "no gold here"}])
    assert cli_main(["eval", "exact-match", str(runs["sft"]), "--data", path, "--verifier", "exact"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path}:2: no 'answer' to check the completion against"
