"""`maxlm eval perplexity` against exp of the mean NLL computed in numpy from the model's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maxlm.cli import main as cli_main
from maxlm.data import chat
from maxlm.eval.perplexity import eval_perplexity, windows

LONG = ("Text wrapping and filling: the module provides functions that reformat paragraphs so that each line "
        "fits in a given width, breaking on whitespace and hyphens, and it keeps the words whole. ") * 2


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_logp(model, ids: list[int], mask: list[int] | None = None) -> tuple[float, int]:
    """Returns (sum of log p(ids[t] | ids[:t]) where mask[t], count) for t >= 1, from one forward's logits."""
    logp = log_softmax(np.asarray(model(np.asarray([ids])))[0])
    ts = [t for t in range(1, len(ids)) if mask is None or mask[t]]
    return float(sum(logp[t - 1, ids[t]] for t in ts)), len(ts)


def test_windows_score_every_token_once():
    ids = list(range(10))
    w = windows(ids, 4)
    assert w == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert [t for x in w for t in x[1:]] == ids[1:]  # each window's first token is context only
    assert windows([5], 4) == [[5]] and windows(list(range(4)), 4) == [[0, 1, 2, 3]]


def test_text_perplexity_is_exp_of_numpy_nll(models, runs, write_jsonl, tmp_path, capsys):
    model = models["pretrain"]
    tok = model.tokenizer
    texts = [LONG, "A short paragraph.", "Another one, to be left out by --rows."]
    path = write_jsonl("held_out.jsonl", [{"text": t} for t in texts])
    result = eval_perplexity(model, [path], rows=":2")

    total, count = 0.0, 0
    for text in texts[:2]:
        ids = [tok.bos_id] + tok.encode(text) + [tok.eos_id]  # data.add_bos and add_eos, as training reads text
        # Windows of max_seq_len = 64 tokens overlapping by one, written out here rather than taken from the module.
        for start in range(0, len(ids) - 1, 63):
            s, n = numpy_logp(model, ids[start : start + 64])
            total, count = total + s, count + n
        assert len(ids) > 64 or text != LONG  # the long document really spans several windows
    assert result["tokens"] == count == sum(len(tok.encode(t)) + 1 for t in texts[:2])
    assert result["nll"] == pytest.approx(-total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(np.exp(-total / count), rel=1e-5)
    assert result["documents"] == 2 and result["windows"] >= 4

    # The CLI prints the same numbers as one JSON line and writes both result files.
    assert cli_main(["eval", "perplexity", str(runs["pretrain"]), "--data", path, "--rows", ":2", "--output", str(tmp_path / "out")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["perplexity"] == pytest.approx(result["perplexity"], rel=1e-5)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tokens"] == count
    assert "| perplexity |" in (tmp_path / "out" / "results.md").read_text()


def test_sft_perplexity_scores_the_replies_only(models, write_jsonl):
    model = models["sft"]
    tok = model.tokenizer
    records = [{"prompt": "Wrap this text.", "response": "The lines are filled to the width."},
               {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
                             {"role": "user", "content": "Dedent it"}, {"role": "assistant", "content": "Common leading whitespace is removed."}]},
               {"prompt": "Too long " * 200, "response": "skipped"}]
    path = write_jsonl("chat.jsonl", records)
    result = eval_perplexity(model, [path], task="sft")
    total, count = 0.0, 0
    for messages in ([{"role": "user", "content": records[0]["prompt"]}, {"role": "assistant", "content": records[0]["response"]}],
                     records[1]["messages"]):
        ids, mask = chat.encode_chat(tok, "default", messages)
        s, n = numpy_logp(model, ids, mask)
        total, count = total + s, count + n
    assert result["tokens"] == count and result["records"] == 2 and result["skipped"] == 1
    assert result["perplexity"] == pytest.approx(np.exp(-total / count), rel=1e-5)

