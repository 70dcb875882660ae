"""The perplexity curation stage with a tiny maxlm model trained here on tinyshakespeare: gibberish
and shuffled text score higher than held-out Shakespeare and are the documents it drops; the
model loads once per worker, the whole batch is scored at once, bad parameters name the YAML line."""

from __future__ import annotations

import glob
import json
import random
from pathlib import Path

import pytest
import yaml

from data_pipelines.curate.config import load_pipeline
from data_pipelines.curate.stages import STAGES
from data_pipelines.curate.document import Document
from data_pipelines.curate.pipeline import curate
from data_pipelines.curate.stages import build_stage
from data_pipelines.curate.stats import StageStats
from maxlm.files.readers import iter_records
from maxlm.errors import MaxlmError

REPO = Path(__file__).resolve().parents[3]
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#@%&*{}[]<>|~^"


@pytest.fixture(scope="module")
def run_dir(shared_data, tmp_path_factory) -> Path:
    """A tiny Llama trained for 60 steps on the first 90% of tinyshakespeare (a few seconds after compiling)."""
    from maxlm.config import SourceConfig, load_config
    from maxlm.data.sources import iter_texts
    from maxlm.data.tokenizers import train_sentencepiece
    from maxlm.train.run import train

    root = tmp_path_factory.mktemp("ppl_model")
    src = str(shared_data / "pretrain" / "tinyshakespeare.txt")
    tok = train_sentencepiece(iter_texts([SourceConfig(path=src)]), root / "tok.model", vocab_size=384,
                              max_sentences=5000, character_coverage=1.0)
    cfg = {
        "base_config": str(REPO / "configs" / "models" / "tiny.yaml"),
        "run_dir": str(root / "run"),
        "tokenizer": {"path": str(tok)},
        "data": {"train_files": [{"path": src, "rows": "0:90%"}], "seq_len": 64},
        "train": {"steps": 60, "global_batch_size": 8, "learning_rate": 1e-2, "warmup_steps": 5, "log_every": 20},
        "checkpoint": {"interval_steps": 60, "async_save": False},
        "mesh": {"data": -1},
    }
    (root / "exp.yaml").write_text(yaml.safe_dump(cfg))
    train(load_config(root / "exp.yaml"), log=lambda *_: None)
    return root / "run"


@pytest.fixture(scope="module")
def corpus(shared_data, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """24 held-out Shakespeare passages, 4 random-character strings and 4 character-shuffled passages."""
    text = (shared_data / "pretrain" / "tinyshakespeare.txt").read_text()
    held_out = [p for p in text[int(0.92 * len(text)):].split("\n\n") if len(p) > 200][:28]
    rng = random.Random(0)
    rows = [{"id": f"nat{i}", "text": t} for i, t in enumerate(held_out[:24])]
    rows += [{"id": f"rnd{i}", "text": "".join(rng.choice(ALPHABET) for _ in range(300))} for i in range(4)]
    for i, t in enumerate(held_out[24:]):
        chars = list(t)
        rng.shuffle(chars)
        rows.append({"id": f"shf{i}", "text": "".join(chars)})
    rng.shuffle(rows)
    path = tmp_path_factory.mktemp("ppl_corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, {r["id"]: r["text"] for r in rows}


def pipeline(write_yaml, run_dir: Path, **params) -> Path:
    return write_yaml(yaml.safe_dump({"batch_size": 64, "stages": [{"perplexity": {"model": str(run_dir), **params}}]}))


def test_gibberish_scores_higher_and_is_what_the_stage_drops(run_dir, corpus, write_yaml, tmp_path, monkeypatch):
    import maxlm.infer.pretrained

    path, texts = corpus
    loads = []
    real = maxlm.infer.pretrained.from_pretrained
    monkeypatch.setattr(maxlm.infer.pretrained, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    natural = sum(k.startswith("nat") for k in texts)
    # Every document in one batch: the batch's quantile at the last natural rank splits off the rest.
    cfg = load_pipeline(pipeline(write_yaml, run_dir, max_tokens=128, high_quantile=(natural - 1) / (len(texts) - 1)), STAGES)
    report = curate(cfg, str(path), tmp_path / "out", workers=1)
    kept = [r for p in sorted(glob.glob(str(tmp_path / "out" / "*.jsonl.zst"))) for _, r in iter_records(p, strict=True)]
    assert sorted(r["id"] for r in kept) == sorted(k for k in texts if k.startswith("nat"))
    assert all(r["perplexity"] > 1 for r in kept)
    (st,) = report["stages"]
    assert st["removed"] == {"high_perplexity": len(texts) - natural} and "perplexity" in st["histograms"]
    assert len(loads) == 1  # one model load for the worker, not one per document or batch

    # The scores themselves, through the stage object (the path every executor takes): all bytes,
    # then per token, where shuffled characters hide among the prose.
    for unit in ("byte", "token"):
        stage = build_stage("perplexity", load_pipeline(pipeline(write_yaml, run_dir, max_tokens=128, unit=unit), STAGES).stages[0].params)
        docs = [Document(k, t) for k, t in texts.items()]
        stats = StageStats()
        stage.prepare(docs)
        assert all(stage.process(d, stats) is None for d in docs)
        ppl = {d.id: d.meta["perplexity"] for d in docs}
        nat = max(v for k, v in ppl.items() if k.startswith("nat"))
        assert min(v for k, v in ppl.items() if k.startswith("rnd")) > 2 * nat, (unit, ppl)
        if unit == "byte":
            assert min(v for k, v in ppl.items() if k.startswith("shf")) > nat, ppl
        assert len(stats.samples["perplexity"]) == len(docs)


def test_absolute_bounds_and_unscored_documents(run_dir, write_yaml):
    params = load_pipeline(pipeline(write_yaml, run_dir, min_perplexity=1.0, max_perplexity=1.5), STAGES).stages[0].params
    stage = build_stage("perplexity", params)
    docs = [Document("empty", ""), Document("prose", "First Citizen:\nBefore we proceed any further, hear me speak.")]
    stats = StageStats()
    # process() without prepare(): a caller that does not batch still gets a score.
    assert stage.process(docs[0], stats) is None and stats.counters == {"unscored": 1}
    assert stage.process(docs[1], stats) == "high_perplexity" and docs[1].meta["perplexity"] > 1.5


@pytest.mark.parametrize("params, message", [
    ({}, "stages[0].perplexity.model: required"),
    ({"model": "/nonexistent/run"}, "stage perplexity: model /nonexistent/run not found"),
    ({"model": "x", "high_quantile": 1.5}, "high_quantile: must be a fraction in [0, 1]"),
    ({"model": "x", "min_perplexity": 9, "max_perplexity": 3}, "min_perplexity: must be <="),
    ({"model": "x", "unit": "char"}, "unit must be one of byte, token"),
])
def test_bad_parameters_name_the_yaml_line(write_yaml, params, message):
    path = write_yaml(yaml.safe_dump({"stages": [{"perplexity": params}]}))
    with pytest.raises(MaxlmError) as e:
        cfg = load_pipeline(path, STAGES)
        build_stage("perplexity", cfg.stages[0].params)
    assert message in str(e.value)
    if "not found" not in message:
        assert str(e.value).startswith(f"{path}:")
