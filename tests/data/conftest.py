"""Fixtures of the data tests: a private cache dir, a real sentencepiece model, small corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maxlm.data.tokenizers import load_tokenizer, train_sentencepiece


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Returns the cache dir every data test uses, so tests never touch ~/.cache/maxlm."""
    path = tmp_path_factory.mktemp("maxlm_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MAXLM_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def shakespeare(shared_data) -> Path:
    """Returns the path of tinyshakespeare.txt."""
    path = shared_data / "pretrain" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the shared data")
    return path


@pytest.fixture(scope="session")
def spm_path(shakespeare, tmp_path_factory) -> Path:
    """Returns a 512-piece BPE sentencepiece model trained once on tinyshakespeare."""
    text = shakespeare.read_text(encoding="utf-8")
    return train_sentencepiece(text.split("\n\n"), tmp_path_factory.mktemp("tok") / "sp512.model", vocab_size=512)


@pytest.fixture(scope="session")
def tokenizer(spm_path):
    """Returns the loaded 512-piece sentencepiece tokenizer."""
    return load_tokenizer(spm_path)


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def write_jsonl():
    """Returns a function (path, texts) -> path writing one {"text": ...} object per line."""
    return _write_jsonl
