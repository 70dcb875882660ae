"""The loaded model on text: one error for a model without tokenizer files, the tokenizer loaded once, plain text
with BOS exactly once (when the run adds it and the tokenizer has one), prompts read as each task trains on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maxlm
from maxlm.ckpt.manager import Checkpoints
from maxlm.config import Config, DataConfig, ModelConfig
from maxlm.data import chat
from maxlm.data.tokenizers import SentencePieceTokenizer, load_tokenizer
from maxlm.errors import MaxlmError
from maxlm.eval.generation import greedy_completions
from maxlm.infer.pretrained import Pretrained, prompt_text
from maxlm.models import params as params_lib

MODEL = ModelConfig(vocab_size=280, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64, max_seq_len=64, dtype="float32")


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
    """A small sentencepiece tokenizer trained in the test (byte fallback: any text encodes)."""
    from maxlm.data.examples import record_texts
    from maxlm.data.tokenizers import train_sentencepiece

    return train_sentencepiece(record_texts("builtin:arithmetic", "grpo", "error"), tmp_path_factory.mktemp("tok") / "t.model", vocab_size=280)


@pytest.fixture(scope="module")
def tokenizer(sp_path):
    return load_tokenizer(sp_path)


def on_text(cfg: Config, tokenizer) -> Pretrained:
    """A Pretrained for its text methods only (no weights: nothing here calls the model)."""
    return Pretrained(cfg, None, None, tokenizer, None)


class NoBos:
    """A tokenizer without BOS or EOS (bos_id = eos_id = -1), encoding characters as their code points."""

    bos_id = eos_id = -1
    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


@pytest.fixture(scope="module")
def run_without_tokenizer(tmp_path_factory):
    """A maxlm run dir of random weights whose config names no tokenizer and that holds no tokenizer files."""
    cfg = Config(run_dir=str(tmp_path_factory.mktemp("no_tok") / "run"), model=MODEL, data=DataConfig(seq_len=64))
    _, shapes, _ = params_lib.abstract(MODEL)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes)
    ckpts = Checkpoints(cfg.run_dir, async_save=False)
    ckpts.save(1, params, cfg)
    ckpts.close()
    return cfg.run_dir


def test_a_model_without_tokenizer_files_gives_one_error_at_each_text_use(run_without_tokenizer):
    model = maxlm.from_pretrained(run_without_tokenizer)
    assert model(np.asarray([[1, 2, 3]])).shape == (1, 3, MODEL.vocab_size)  # token ids need no tokenizer
    assert model.generate([[1, 2, 3]], 2).shape == (1, 5)
    uses = [lambda: model.tokenizer, lambda: model.encode_text("hi"), lambda: model.encode_prompts(["hi"]),
            lambda: model.generate_text(["hi"], 2), lambda: greedy_completions(model, ["hi"], 2)]
    for use in uses:
        with pytest.raises(MaxlmError, match=f"^{run_without_tokenizer}: has no tokenizer files; "):
            use()


@pytest.mark.parametrize("as_str", [True, False])
def test_the_tokenizer_is_loaded_once_from_its_path(sp_path, as_str):
    model = on_text(Config(), str(sp_path) if as_str else sp_path)
    first = model.tokenizer
    assert isinstance(first, SentencePieceTokenizer) and first.path == str(sp_path)
    assert model.tokenizer is first


def test_plain_text_has_bos_exactly_once_when_the_run_adds_it_and_the_tokenizer_has_one(tokenizer):
    text = "Once upon a time"
    assert tokenizer.bos_id >= 0 and tokenizer.bos_id not in tokenizer.encode(text)
    for add_bos, add_eos in ((True, True), (True, False), (False, True), (False, False)):
        model = on_text(Config(data=DataConfig(add_bos=add_bos, add_eos=add_eos)), tokenizer)
        ids = model.encode_text(text)
        assert ids.count(tokenizer.bos_id) == int(add_bos) and ids[int(add_bos):] == tokenizer.encode(text)
        doc = model.encode_text(text, document=True)  # a document as training reads it: EOS too, per data.add_eos
        assert doc == ids + [tokenizer.eos_id] * add_eos
    assert on_text(Config(data=DataConfig(add_bos=True, add_eos=True)), NoBos()).encode_text("ab", document=True) == [97, 98]


def test_pretrain_prompts_are_plain_text_after_bos(tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "user", "content": "Answer briefly."}]
    assert prompt_text(messages) == "What is 2 + 3?\n\nAnswer briefly."
    for add_bos, bos in ((True, [tokenizer.bos_id]), (False, [])):
        model = on_text(Config(task="pretrain", data=DataConfig(add_bos=add_bos)), tokenizer)
        ids, stops = model.encode_prompts(["Once upon", messages])
        assert ids == [bos + tokenizer.encode("Once upon"), bos + tokenizer.encode(prompt_text(messages))]
        assert stops == [tokenizer.eos_id]


@pytest.mark.parametrize("template", ["default", "chatml"])
def test_chat_prompts_use_the_run_template_and_its_stops(tokenizer, template):
    model = on_text(Config(task="sft", data=DataConfig(chat_template=template)), tokenizer)
    assert model.template == template
    ids, stops = model.encode_prompts(["What is 2 + 3?"])
    assert ids == [chat.encode_prompt(tokenizer, template, [{"role": "user", "content": "What is 2 + 3?"}])]
    assert ids[0][: len(tokenizer.encode("What"))] != tokenizer.encode("What")  # the template's header comes first
    assert stops == chat.stop_ids(tokenizer, template) and tokenizer.eos_id in stops
