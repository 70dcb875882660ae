"""The quality_classifier stage: `maxlm curate` trains it from example files (instructional text vs
spam), writes the model, and a later run that names only the model scores the same; on unseen
instructional text and unseen spam it keeps the one and drops the other."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from curate_outputs import read_output
from data_pipelines.curate.cli import main as cli_main
from data_pipelines.curate.config import load_pipeline
from data_pipelines.curate.stages import STAGES
from data_pipelines.curate.stages.quality_classifier import MODEL_FORMAT, LinearModel, TrainSpec, features, train
from labelled_corpus import _spam_docs
from maxlm.errors import MaxlmError


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture
def data(tmp_path, shared_data):
    """Writes positive/negative example files and an unseen test corpus; returns their directory."""
    gsm = _jsonl(shared_data / "sft" / "gsm8k_train.jsonl")
    seeds = _jsonl(shared_data / "sft" / "alpaca_seed_tasks.jsonl")
    roleplay = json.loads((shared_data / "sft" / "gpteacher_roleplay.json").read_text())
    ex = tmp_path / "examples"
    ex.mkdir()
    _write(ex / "pos_gsm8k.jsonl", [{"text": r["question"] + "\n" + r["answer"]} for r in gsm[:1200]])
    # a second positive file, with its text under another key
    _write(ex / "pos_alpaca.jsonl", [{"instruction": s["instruction"] + "\n" + s["instances"][0]["output"]} for s in seeds])
    _write(ex / "neg_spam.jsonl", [{"text": t} for t in _spam_docs(400, random.Random(1))])
    test = tmp_path / "in"
    test.mkdir()
    recs = [{"id": f"gsm{i}", "text": r["question"] + "\n" + r["answer"], "kind": "clean"} for i, r in enumerate(gsm[5000:5200])]
    recs += [{"id": f"role{i}", "text": r["instruction"] + "\n" + r["output"], "kind": "clean"}  # a source it never saw
             for i, r in enumerate(roleplay[:200]) if isinstance(r.get("output"), str)]
    recs += [{"id": f"spam{i}", "text": t, "kind": "spam"} for i, t in enumerate(_spam_docs(200, random.Random(7)))]
    _write(test / "corpus.jsonl", recs)
    return tmp_path


def _yaml(write_yaml, d: Path, with_train: bool, name: str = "p.yaml") -> str:
    train = (f"\n      train: {{positive: ['{d}/examples/pos_*.jsonl'], negative: ['{d}/examples/neg_spam.jsonl'], "
             "text_key: [text, instruction]}") if with_train else ""
    return str(write_yaml(f"stages:\n  - quality_classifier:\n      model: {d}/model.npz{train}\n", name))


def test_trained_by_curate_keeps_instructions_drops_spam_and_the_model_file_is_reused(tmp_path, data, write_yaml):
    pattern = str(data / "in" / "*.jsonl")
    assert cli_main(["curate", _yaml(write_yaml, data, True), "--input", pattern, "--output", str(tmp_path / "o1"), "-q", "--workers", "2"]) == 0
    model = LinearModel.load(str(data / "model.npz"))
    assert model.info["positive"] == 1200 + 175 and model.info["negative"] == 400 and model.info["held_out_accuracy"] >= 0.98
    recs = _jsonl(data / "in" / "corpus.jsonl")
    kept = {r["id"]: r for r in read_output(tmp_path / "o1")}
    for kind, prefix in (("clean", "gsm"), ("clean", "role"), ("spam", "spam")):
        ids = [r["id"] for r in recs if r["id"].startswith(prefix)]
        frac_kept = sum(i in kept for i in ids) / len(ids)
        assert (frac_kept >= 0.97) if kind == "clean" else (frac_kept <= 0.03), (prefix, frac_kept)
    assert all(0.5 <= r["quality_score"] <= 1 for r in kept.values())
    # a later run names only the model file: the same scores, no training
    before = (data / "model.npz").stat().st_mtime_ns
    assert cli_main(["curate", _yaml(write_yaml, data, False, "p2.yaml"), "--input", pattern, "--output", str(tmp_path / "o2"), "-q"]) == 0
    assert (data / "model.npz").stat().st_mtime_ns == before
    assert {r["id"]: r["quality_score"] for r in read_output(tmp_path / "o2")} == {i: r["quality_score"] for i, r in kept.items()}
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert report["stages"][0]["removed"] == {"low_quality": len(recs) - len(kept)}


def test_a_model_trained_from_other_examples_is_not_silently_reused(tmp_path, data, write_yaml, capsys):
    LinearModel(np.zeros(8, np.float32), 0.0, {"format": MODEL_FORMAT, "fingerprint": "other"}).save(str(data / "model.npz"))
    rc = cli_main(["curate", _yaml(write_yaml, data, True), "--input", str(data / "in" / "*.jsonl"), "--output", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: {data}/model.npz: this model was trained from other examples") and len(err.splitlines()) == 1


def test_two_kinds_of_real_text_are_told_apart_on_held_out_examples(tmp_path, shared_data):
    # harder than spam: word problems against Shakespeare, both real prose of the shared data
    gsm = _jsonl(shared_data / "sft" / "gsm8k_train.jsonl")[:800]
    speeches = [s for s in (shared_data / "pretrain" / "tinyshakespeare.txt").read_text().split("\n\n") if len(s.split()) >= 25][:800]
    spec = TrainSpec(positive=[str(_write(tmp_path / "p.jsonl", [{"text": r["question"]} for r in gsm]))],
                     negative=[str(_write(tmp_path / "n.jsonl", [{"text": t} for t in speeches]))], buckets=1 << 18)
    model = train(spec)
    assert model.info["held_out"] == 160 and model.info["held_out_accuracy"] >= 0.97
    unseen = _jsonl(shared_data / "sft" / "gsm8k_train.jsonl")[6000:6100]
    assert sum(model.score(r["question"]) >= 0.5 for r in unseen) >= 97


def test_features_are_stable_and_normalised():
    idx, val = features("The cat sat. The cat!", 1 << 20)
    assert len(idx) == 6 and abs(float((val ** 2).sum()) - 1) < 1e-6  # the, cat, sat; "the cat", "cat sat", "sat the"
    assert features("the cat sat the cat", 1 << 20)[0].tolist() == idx.tolist()  # case and punctuation do not matter


@pytest.mark.parametrize("yaml, expected", [
    ("  - quality_classifier: {}\n", "stages[0].quality_classifier.model: give the model file"),
    ("  - quality_classifier: {model: /no/model.npz}\n", "stages[0].quality_classifier.model: /no/model.npz not found; train it first"),
    ("  - quality_classifier: {model: m.npz, train: {positive: [/no/*.jsonl], negative: [/no/x]}}\n",
     "stages[0].quality_classifier.train.positive: no file matches /no/*.jsonl"),
    ("  - quality_classifier: {model: m.npz, threshold: 2}\n", "threshold: must be a fraction"),
    ("  - quality_classifier: {model: m.npz, treshold: 0.5}\n", "did you mean stages[0].quality_classifier.threshold?"),
])
def test_config_mistakes_name_the_key(write_yaml, yaml, expected):
    p = write_yaml("stages:\n" + yaml)
    with pytest.raises(MaxlmError) as err:
        load_pipeline(p, STAGES)
    assert expected in str(err.value) and f"{p}:2" in str(err.value)
