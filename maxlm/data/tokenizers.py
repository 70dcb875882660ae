"""Tokenizers: sentencepiece `.model` files (trained here or Llama 2's) and Hugging Face
tokenizer directories, behind one small interface; plus sentencepiece training.

`encode` never adds BOS/EOS: the pipeline adds them per `data.add_bos` / `data.add_eos`.
Ids that a tokenizer lacks are -1, except `pad_id`, which is always a valid id (0 when
the tokenizer has none): padding is marked by segment id 0, so its token value never
reaches the loss, but it must still index the embedding table.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from maxlm.config import Config
from maxlm.data.cache import write_atomic
from maxlm.data.sources import iter_texts, train_sources
from maxlm.errors import MaxlmError

MAX_TRAINING_LINE = 8192  # bytes; sentencepiece silently drops longer sentences
MAX_TRAINING_CHARS = MAX_TRAINING_LINE // 4  # a UTF-8 character takes at most 4 bytes


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids."""

    path: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class SentencePieceTokenizer:
    """A sentencepiece model; pickles as its serialized proto so worker processes need no file."""

    def __init__(self, model_proto: bytes, path: str = ""):
        import sentencepiece as spm

        self.path = path
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def __getstate__(self) -> dict:
        return {"model_proto": self._proto, "path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class HFTokenizer:
    """A Hugging Face tokenizer directory, loaded with transformers' AutoTokenizer."""

    def __init__(self, path: str):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise MaxlmError(f"{path}: loading a Hugging Face tokenizer needs transformers: pip install transformers") from None
        try:
            self._tok = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # transformers raises OSError, ValueError, KeyError, ...
            raise MaxlmError(f"{path}: not a loadable Hugging Face tokenizer directory: {e}") from None
        self.path = path
        self.vocab_size = len(self._tok)  # counts added tokens, which the embedding must cover
        self.bos_id = _id_or(self._tok.bos_token_id, -1)
        self.eos_id = _id_or(self._tok.eos_token_id, -1)
        self.pad_id = _id_or(self._tok.pad_token_id, 0)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        # Special tokens dropped, as sentencepiece drops its control symbols.
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def _id_or(value, default: int) -> int:
    return default if value is None else int(value)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Returns the tokenizer at `path`: a sentencepiece .model file or an HF tokenizer directory."""
    p = Path(path)
    if p.is_dir():
        return HFTokenizer(str(p))
    if not p.is_file():
        raise MaxlmError(f"{p}: tokenizer not found (expected a sentencepiece .model file or a Hugging Face tokenizer directory)")
    try:
        return SentencePieceTokenizer(p.read_bytes(), str(p))
    except RuntimeError as e:
        raise MaxlmError(f"{p}: not a sentencepiece model: {e}") from None


def training_lines(texts: Iterable[str], max_sentences: int) -> Iterator[str]:
    """Returns the non-blank lines of `texts`, long ones cut into pieces, at most max_sentences."""
    n = 0
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            for i in range(0, len(line), MAX_TRAINING_CHARS):
                yield line[i : i + MAX_TRAINING_CHARS]
                n += 1
                if n >= max_sentences:
                    return


def train_sentencepiece(
    texts: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int = 4096,
    model_type: str = "bpe",
    max_sentences: int = 200000,
    character_coverage: float = 0.9995,
    vocab_setting: str = "tokenizer.vocab_size",
) -> Path:
    """Returns `out_path` after training a sentencepiece model on the lines of `texts` there.

    Lines are the training sentences; the first `max_sentences` are used (the sources are
    read round-robin by `sources.iter_texts`, so every source contributes). Byte fallback
    makes any text encodable; identity normalization and kept whitespace make
    decode(encode(text)) == text. Training is deterministic, so every host that trains the
    same config gets the same file (each writes it atomically).
    """
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise MaxlmError(f"tokenizer.model_type must be bpe or unigram, got {model_type!r}")
    if vocab_size < 260:
        raise MaxlmError(f"{vocab_setting} must be >= 260 (256 byte pieces + unk, bos, eos + 1), got {vocab_size}")
    if max_sentences <= 0:
        raise MaxlmError(f"tokenizer.max_sentences must be > 0, got {max_sentences}")
    lines = training_lines(texts, max_sentences)
    first = next(lines, None)
    if first is None:
        raise MaxlmError(f"{out_path}: no text to train the tokenizer on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], lines),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            # No dummy prefix: a word after "\n" then looks the same in training and in documents.
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # Llama's layout; pad_id falls back to 0
            max_sentence_length=MAX_TRAINING_LINE,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise MaxlmError(f"tokenizer training for {out_path} failed: {vocab_failure(str(e), vocab_size, vocab_setting)}") from None
    return write_atomic(out_path, lambda f: f.write(model.getvalue()))


def vocab_failure(message: str, vocab_size: int, setting: str) -> str:
    """Returns sentencepiece's training error said in the user's terms: whether the vocab size is too small or too large."""
    # "Vocabulary size is smaller than required_chars. 300 vs 459.": the text's characters need more pieces.
    small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if small:
        return (f"{setting} {vocab_size} is too small for this text: its characters alone need {small[2]} pieces "
                f"(with the byte and special pieces); set {setting} to at least {small[2]}")
    large = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if large:
        return f"{setting} {vocab_size} is too large for this text, which yields at most {large[2]} pieces; set {setting} to at most {large[2]} or add text"
    return message


def ensure_tokenizer(cfg: Config, texts: Callable[[], Iterable[str]] | None = None) -> Tokenizer:
    """Returns the run's tokenizer, training a sentencepiece model on data.train_files if it is missing.

    It trains on `texts()` (the task's records as text), or on the files as plain documents without it.

    With several processes, process 0 trains it while the others wait, then they load its file
    (a host that does not see it, without a shared run_dir, trains the same file itself).
    """
    import jax

    path = Path(cfg.tokenizer.path or Path(cfg.run_dir) / "tokenizer.model")
    if not path.exists() and path.suffix != ".model":
        raise MaxlmError(
            f"tokenizer.path {path}: not found; give an existing Hugging Face tokenizer directory, "
            "or a path ending in .model to train a sentencepiece tokenizer there"
        )
    if not path.exists() and not train_sources(cfg.data):  # checked by every process, before the wait
        raise MaxlmError(f"tokenizer.path {path} does not exist and data.train_files is empty: nothing to train it on")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0 and not path.exists():
            _train_tokenizer(cfg, path, texts)
        multihost_utils.sync_global_devices("maxlm: tokenizer written")
    if not path.exists():
        _train_tokenizer(cfg, path, texts)
    return load_tokenizer(path)


def _train_tokenizer(cfg: Config, path: Path, texts: Callable[[], Iterable[str]] | None) -> None:
    sources = train_sources(cfg.data)
    t = cfg.tokenizer
    texts = texts() if texts else iter_texts(sources, cfg.data.on_bad_record)
    train_sentencepiece(
        texts, path, vocab_size=t.vocab_size, model_type=t.model_type,
        max_sentences=t.max_sentences, character_coverage=t.character_coverage,
    )
    print(f"trained a {load_tokenizer(path).vocab_size}-token {t.model_type} sentencepiece tokenizer on data.train_files: {path}",
          file=sys.stderr, flush=True)
