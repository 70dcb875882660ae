"""Tokenizers: sentencepiece training and round trips, HF directories, ensure_tokenizer."""

from __future__ import annotations

import pickle

import pytest

from maxlm.config import Config, DataConfig, SourceConfig, TokenizerConfig
from maxlm.data.tokenizers import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    ensure_tokenizer,
    load_tokenizer,
    train_sentencepiece,
)
from maxlm.errors import MaxlmError

ODD_TEXT = "Naïve café — 日本語 ✓\tTabs,  two spaces\n\n  indented\r\nand a trailing space "


def test_trained_model_layout(tokenizer):
    assert isinstance(tokenizer, SentencePieceTokenizer) and isinstance(tokenizer, Tokenizer)
    assert tokenizer.vocab_size == 512
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 0)  # no pad piece: pad falls back to 0


def test_round_trip_on_seen_and_unseen_text(tokenizer, shakespeare):
    seen = shakespeare.read_text(encoding="utf-8")[:20000]
    ids = tokenizer.encode(seen)
    assert tokenizer.decode(ids) == seen
    assert len(ids) < len(seen) / 1.5  # it learned merges, not just characters
    # Characters absent from the training text encode through byte fallback and decode back.
    odd = tokenizer.encode(ODD_TEXT)
    assert all(0 <= i < tokenizer.vocab_size for i in odd)
    assert tokenizer.decode(odd) == ODD_TEXT
    assert tokenizer.encode("") == [] and tokenizer.decode([]) == ""


def test_pickles_without_the_file(tokenizer, tmp_path):
    clone = pickle.loads(pickle.dumps(tokenizer))  # what Grain worker processes receive
    assert clone.encode(ODD_TEXT) == tokenizer.encode(ODD_TEXT)


def test_training_is_deterministic_and_atomic(shakespeare, spm_path, tmp_path):
    texts = shakespeare.read_text(encoding="utf-8").split("\n\n")
    again = train_sentencepiece(texts, tmp_path / "again.model", vocab_size=512)
    assert again.read_bytes() == spm_path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.model"]  # no temp file left behind


def test_training_errors_are_maxlm_errors(tmp_path):
    with pytest.raises(MaxlmError, match="vocab_size must be >= 260"):
        train_sentencepiece(["some text"], tmp_path / "t.model", vocab_size=100)
    with pytest.raises(MaxlmError, match="no text"):
        train_sentencepiece(["", "  \n"], tmp_path / "t.model", vocab_size=300)
    with pytest.raises(MaxlmError, match="too large"):
        train_sentencepiece(["tiny text only"], tmp_path / "t.model", vocab_size=5000)
    assert not (tmp_path / "t.model").exists()


def test_hf_directory_matches_sentencepiece(tokenizer, spm_path, shakespeare, tmp_path):
    transformers = pytest.importorskip("transformers")
    # transformers' own converter turns our .model into a tokenizer.json directory.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tokenizer.model").write_bytes(spm_path.read_bytes())
    converted = transformers.LlamaTokenizer.from_pretrained(str(tmp_path / "src"), add_prefix_space=False)
    converted.save_pretrained(str(tmp_path / "hf"))
    hf = load_tokenizer(tmp_path / "hf")
    assert isinstance(hf, HFTokenizer)
    assert (hf.vocab_size, hf.bos_id, hf.eos_id) == (512, 1, 2)
    text = shakespeare.read_text(encoding="utf-8")[:5000] + ODD_TEXT
    assert hf.encode(text) == tokenizer.encode(text)
    assert hf.decode(hf.encode(text)) == text
    assert pickle.loads(pickle.dumps(hf)).encode(text) == hf.encode(text)


def test_load_errors(tmp_path):
    with pytest.raises(MaxlmError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(MaxlmError, match="not a sentencepiece model"):
        load_tokenizer(tmp_path / "junk.model")


def test_ensure_tokenizer_trains_once_then_loads(shakespeare, tmp_path, capsys):
    cfg = Config(
        run_dir=str(tmp_path / "run"),
        tokenizer=TokenizerConfig(vocab_size=320),
        data=DataConfig(train_files=[SourceConfig(path=str(shakespeare), format="text")]),
    )
    tok = ensure_tokenizer(cfg)
    path = tmp_path / "run" / "tokenizer.model"
    assert path.is_file() and tok.vocab_size == 320
    assert str(path) in capsys.readouterr().err
    mtime = path.stat().st_mtime_ns
    again = ensure_tokenizer(cfg)
    assert path.stat().st_mtime_ns == mtime and again.encode("To be") == tok.encode("To be")


def test_ensure_tokenizer_needs_something_to_train_on(tmp_path):
    with pytest.raises(MaxlmError, match="data.train_files is empty"):
        ensure_tokenizer(Config(run_dir=str(tmp_path)))
    with pytest.raises(MaxlmError, match="path ending in .model"):
        ensure_tokenizer(Config(run_dir=str(tmp_path), tokenizer=TokenizerConfig(path=str(tmp_path / "hf_dir"))))
