"""`maxlm eval mc`: the pick is the choice with the highest log-prob (numpy from the logits), acc_norm per byte."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maxlm.cli import main as cli_main
from maxlm.eval.multiple_choice import multiple_choice

QUESTIONS = [
    ("Which function wraps a paragraph?", ["x", "the wrap function of the textwrap module"], "lib"),
    ("What does dedent remove?", ["common leading whitespace", "nothing", "every newline", "the last word"], "lib"),
    ("Which word is a verb?", ["fill", "paragraph", "width"], "words"),
]


def choice_logps(model) -> list[np.ndarray]:
    """Returns each question's summed log p of ` choice` after `Question: ...\\nAnswer:` (BOS first), from the logits."""
    tok = model.tokenizer
    seqs = []  # (ids, where the continuation starts)
    for question, choices, _ in QUESTIONS:
        context = [tok.bos_id] + tok.encode(f"Question: {question}\nAnswer:")
        seqs += [(context + tok.encode(" " + c), len(context)) for c in choices]
    tokens = np.zeros((len(seqs), model.config.model.max_seq_len), np.int32)  # right padding: causal, never seen
    for i, (ids, _) in enumerate(seqs):
        tokens[i, : len(ids)] = ids
    logits = np.asarray(model(tokens), np.float64)  # one forward, one compile
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    sums = [sum(logp[i, t - 1, ids[t]] for t in range(start, len(ids))) for i, (ids, start) in enumerate(seqs)]
    bounds = np.cumsum([0] + [len(c) for _, c, _ in QUESTIONS])
    return [np.asarray(sums[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def test_picks_the_most_likely_choice_and_acc_norm_divides_by_bytes(models, runs, write_jsonl, tmp_path, capsys):
    model = models["pretrain"]
    logps = choice_logps(model)
    per_byte = [lp / np.asarray([len((" " + x).encode()) for x in c]) for lp, (_, c, _) in zip(logps, QUESTIONS)]
    # The constructed case: a one-letter choice wins on the sum, the long one per byte.
    assert np.argmax(logps[0]) == 0 and np.argmax(per_byte[0]) == 1
    # Gold: the sum's pick for the first two questions (one given as a letter), another choice for the third.
    answers = ["A" if np.argmax(logps[0]) == 0 else "B", int(np.argmax(logps[1])), (int(np.argmax(logps[2])) + 1) % 3]
    records = [{"question": q, "choices": c, "answer": a, "subject": s} for (q, c, s), a in zip(QUESTIONS, answers)]
    path = write_jsonl("mc.jsonl", records)
    result = multiple_choice(model, path)

    gold = [0 if answers[0] == "A" else 1, answers[1], answers[2]]
    acc = [int(np.argmax(lp)) == g for lp, g in zip(logps, gold)]
    acc_norm = [int(np.argmax(pb)) == g for pb, g in zip(per_byte, gold)]
    assert acc == [True, True, False]
    assert result["acc"] == pytest.approx(np.mean(acc)) and result["acc_norm"] == pytest.approx(np.mean(acc_norm))
    assert result["acc"] != result["acc_norm"] and result["n"] == 3 and result["skipped"] == 0
    assert result["subjects"]["lib"] == {"acc": 1.0, "acc_norm": pytest.approx(np.mean(acc_norm[:2])), "n": 2}
    assert result["subjects"]["words"]["acc"] == 0.0

    assert cli_main(["eval", "mc", str(runs["pretrain"]), "--data", path, "--output", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["acc"], printed["acc_norm"]) == (result["acc"], result["acc_norm"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## subjects" in md and "| lib | 1.0000 |" in md


@pytest.mark.parametrize("record, line2_error", [
    ({"question": "q?", "answer": 0}, "'choices' must be a list of at least 2 non-empty strings, got None"),
    ({"question": "q?", "choices": ["a", "b", "c", "d"], "answer": 7}, "'answer' 7 is out of range for 4 choices"),
    ({"question": "q?", "choices": ["a", "b"], "answer": "C"}, "'answer' 'C' is out of range for 2 choices"),
    ({"question": "q?", "choices": ["a", "b"], "answer": True}, "'answer' must be a choice index or a letter A-B, got True"),
])
def test_bad_records_and_files_are_one_line_errors(runs, write_jsonl, capsys, record, line2_error):
    ok = {"question": "fine?", "choices": ["yes", "no"], "answer": "A"}
    path = write_jsonl("bad.jsonl", [ok, record])
    assert cli_main(["eval", "mc", str(runs["pretrain"]), "--data", path]) == 2
    assert capsys.readouterr().err.strip() == f"error: {path}:2: {line2_error}"


def test_a_missing_file_is_named(runs, tmp_path, capsys):
    missing = str(tmp_path / "nope.jsonl")
    assert cli_main(["eval", "mc", str(runs["pretrain"]), "--data", missing]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: file not found"


def test_skip_drops_and_counts_bad_records(models, write_jsonl):
    path = write_jsonl("some_bad.jsonl", [{"question": "fine?", "choices": ["yes", "no"], "answer": 1}, {"question": "no choices"}])
    result = multiple_choice(models["pretrain"], path, on_bad_record="skip")
    assert (result["n"], result["bad_records"], result["subjects"]) == (1, 1, {})
