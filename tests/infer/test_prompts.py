"""infer.prompts: prompts become sampler ids the way each task trains on them; rows are cut at the first stop."""

from __future__ import annotations

import pytest

from maxlm.config import Config, DataConfig
from maxlm.data import chat
from maxlm.infer.prompts import encode_prompts, prompt_text, until_stop


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A small sentencepiece tokenizer trained in the test (byte fallback: any text encodes)."""
    from maxlm.data.examples import record_texts
    from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece

    path = train_sentencepiece(record_texts("builtin:arithmetic", "grpo", "error"), tmp_path_factory.mktemp("tok") / "t.model", vocab_size=280)
    return load_tokenizer(path)


def test_until_stop_cuts_at_the_earliest_stop():
    assert until_stop([5, 6, 2, 7, 3], [3, 2]) == [5, 6]
    assert until_stop([5, 6, 7], [2]) == [5, 6, 7]
    assert until_stop([2, 5], [2]) == []
    assert until_stop([5, 6], []) == [5, 6]


def test_pretrain_prompts_are_plain_text_after_bos(tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "user", "content": "Answer briefly."}]
    assert prompt_text(messages) == "What is 2 + 3?\n\nAnswer briefly."
    for add_bos, bos in ((True, [tokenizer.bos_id]), (False, [])):
        cfg = Config(task="pretrain", data=DataConfig(add_bos=add_bos))
        ids, stops = encode_prompts(cfg, tokenizer, ["Once upon", messages])
        assert ids == [bos + tokenizer.encode("Once upon"), bos + tokenizer.encode(prompt_text(messages))]
        assert stops == [tokenizer.eos_id]


@pytest.mark.parametrize("template", ["default", "chatml"])
def test_chat_prompts_use_the_run_template_and_its_stops(tokenizer, template):
    cfg = Config(task="sft", data=DataConfig(chat_template=template))
    ids, stops = encode_prompts(cfg, tokenizer, ["What is 2 + 3?"])
    assert ids == [chat.encode_prompt(tokenizer, template, [{"role": "user", "content": "What is 2 + 3?"}])]
    assert ids[0][: len(tokenizer.encode("What"))] != tokenizer.encode("What")  # the template's header comes first
    assert stops == chat.stop_ids(tokenizer, template) and tokenizer.eos_id in stops
