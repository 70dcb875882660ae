"""Tokenizer files between maxlm runs and HF model dirs: copied when they are HF files already,
converted when the run trained a sentencepiece `.model`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from maxlm.ckpt import spm_to_hf
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


def write_hf_tokenizer(src: Path, dst_dir: Path, chat_template: str | None = None) -> None:
    """Writes HF tokenizer files for `src` (an HF tokenizer dir, or a sentencepiece .model) into `dst_dir`,
    with `chat_template` (Jinja) as the tokenizer's own when given."""
    if src.is_dir():
        if not copy_hf_tokenizer(src, dst_dir):
            raise MaxlmError(f"{src}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES[:4])})")
    else:
        _write_spm_tokenizer(src, dst_dir)
    if chat_template is not None:
        set_chat_template(dst_dir, chat_template)


def set_chat_template(dst_dir: Path, chat_template: str) -> None:
    """Makes `chat_template` the template of the HF tokenizer in `dst_dir` (tokenizer_config.json and chat_template.jinja)."""
    path = dst_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    config["chat_template"] = chat_template
    path.write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n")
    # transformers reads chat_template.jinja before tokenizer_config's: both say the same
    (dst_dir / "chat_template.jinja").write_text(chat_template)


def _write_spm_tokenizer(src: Path, dst_dir: Path) -> None:
    shutil.copyfile(src, dst_dir / "tokenizer.model")
    # Written from the model's own specs, with neither transformers nor tokenizers installed: the
    # core install's export is complete. Beside a Llama config.json AutoTokenizer would otherwise
    # pick LlamaTokenizer, whose fixed "▁" prefix changes the ids of a model trained without a
    # dummy prefix (maxlm's); tokenizer_config.json names the tokenizer.json-backed class instead.
    tokenizer, special = spm_to_hf.tokenizer_json(src)
    (dst_dir / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=1) + "\n")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}
    (dst_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n")
    (dst_dir / "special_tokens_map.json").write_text(json.dumps(special, ensure_ascii=False, indent=1) + "\n")


def special_ids(src: Path) -> tuple[int | None, int | None]:
    """Returns the (bos, eos) ids of the tokenizer at `src`, None where it has none."""
    from maxlm.data.tokenizers import load_tokenizer

    tok = load_tokenizer(src)
    return (tok.bos_id if tok.bos_id >= 0 else None), (tok.eos_id if tok.eos_id >= 0 else None)
