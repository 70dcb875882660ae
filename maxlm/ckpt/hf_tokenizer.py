"""Tokenizer files between maxlm runs and HF model dirs: copied when they are HF files already,
converted when the run trained a sentencepiece `.model`."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from maxlm.errors import MaxlmError

# Every file a transformers tokenizer may load from (Llama ships tokenizer.model, Qwen2 vocab + merges).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
)


def has_hf_tokenizer(directory: Path) -> bool:
    """Returns whether `directory` holds files a transformers tokenizer loads from."""
    return any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json"))


def copy_hf_tokenizer(src_dir: Path, dst_dir: Path) -> list[str]:
    """Returns the names of the tokenizer files copied from `src_dir` into `dst_dir`."""
    names = [n for n in TOKENIZER_FILES if (src_dir / n).is_file()]
    if names:
        dst_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copyfile(src_dir / n, dst_dir / n)
    return names


def write_hf_tokenizer(src: Path, dst_dir: Path) -> None:
    """Writes HF tokenizer files for `src` (an HF tokenizer dir, or a sentencepiece .model) into `dst_dir`."""
    if src.is_dir():
        if not copy_hf_tokenizer(src, dst_dir):
            raise MaxlmError(f"{src}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES[:4])})")
        return
    shutil.copyfile(src, dst_dir / "tokenizer.model")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        print(f"warning: {dst_dir}: wrote tokenizer.model only; pip install transformers to also write tokenizer.json",
              file=sys.stderr, flush=True)
        return
    with tempfile.TemporaryDirectory() as scratch:
        # Alone in its dir, the .model becomes a tokenizers-backed tokenizer built from the model's
        # own normalizer spec. Beside a Llama config.json AutoTokenizer would pick LlamaTokenizer,
        # whose fixed "▁" prefix changes the ids of a model trained without a dummy prefix (maxlm's).
        shutil.copyfile(src, Path(scratch) / "tokenizer.model")
        try:
            tok = AutoTokenizer.from_pretrained(scratch)
        except Exception as e:  # transformers raises many types for a bad model file
            raise MaxlmError(f"{src}: could not convert the sentencepiece model to a Hugging Face tokenizer: {e}") from None
        tok.save_pretrained(str(dst_dir))


def special_ids(src: Path) -> tuple[int | None, int | None]:
    """Returns the (bos, eos) ids of the tokenizer at `src`, None where it has none."""
    from maxlm.data.tokenizers import load_tokenizer

    tok = load_tokenizer(src)
    return (tok.bos_id if tok.bos_id >= 0 else None), (tok.eos_id if tok.eos_id >= 0 else None)
