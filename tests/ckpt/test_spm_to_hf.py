"""A sentencepiece model exported as tokenizer.json loads with transformers.AutoTokenizer and
encodes and decodes as sentencepiece does; the export itself needs neither transformers nor
tokenizers (the core install), checked by a run whose process cannot import them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import transformers
from tiny_run import write_tiny_config

from maxlm.ckpt.hf_tokenizer import write_hf_tokenizer
from maxlm.config import SourceConfig
from maxlm.data.sources import iter_texts
from maxlm.data.tokenizers import train_sentencepiece

TEXTS = [
    "ROMEO: O, she doth teach the torches to burn bright!", "  two  spaces\n\nnew lines\t and a tab  ", " leading space",
    "naïve café ﬁne ½ ☃ 😀 — ‘quotes’", "1234567 digits", "USERTOKEN inside USERTOKENtext", "",
]


def corpus(shared_data) -> list[str]:
    return list(iter_texts([SourceConfig(path=str(shared_data / "pretrain" / "tinyshakespeare.txt"))]))[:3000]


@pytest.fixture(scope="module", params=["maxlm bpe", "maxlm unigram", "sentencepiece defaults", "user-defined pieces"])
def sp_model(request, shared_data, tmp_path_factory) -> Path:
    """A sentencepiece model as maxlm trains it, or with sentencepiece's own defaults (NFKC, dummy prefix, whitespace removal)."""
    out = tmp_path_factory.mktemp("spm") / "tok.model"
    texts = corpus(shared_data) + TEXTS
    if request.param.startswith("maxlm"):
        return train_sentencepiece(texts, out, vocab_size=400, model_type=request.param.split()[1], max_sentences=5000)
    extra = {"user_defined_symbols": ["USERTOKEN"]} if request.param == "user-defined pieces" else {}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(out)[:-6], vocab_size=500, model_type="bpe",
                                   byte_fallback=True, minloglevel=2, **extra)
    return out


def test_exported_tokenizer_encodes_and_decodes_as_sentencepiece(sp_model, tmp_path):
    write_hf_tokenizer(sp_model, tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"} <= {p.name for p in tmp_path.iterdir()}
    tok, sp = transformers.AutoTokenizer.from_pretrained(tmp_path), spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in TEXTS:
        ids = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False) == ids, text
        assert tok.decode(ids) == sp.decode(ids), text
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")


@pytest.mark.slow
def test_the_core_install_exports_a_complete_tokenizer(shared_data, tmp_path):
    path = write_tiny_config(tmp_path, shared_data, train={"steps": 1}, export={"hf_dir": "hf"})
    # None in sys.modules makes every import of the package fail, as when it is not installed.
    core = "import sys\nsys.modules.update(transformers=None, tokenizers=None)\nfrom maxlm.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", core, "train", str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in run.stderr
    hf = tmp_path / "run" / "hf"
    tok, sp = transformers.AutoTokenizer.from_pretrained(hf), spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    assert [tok.encode(t, add_special_tokens=False) for t in TEXTS] == [sp.encode(t) for t in TEXTS]
    assert json.loads((hf / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
